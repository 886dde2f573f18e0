"""BEiT self-attention with its relative position bias baked in as a constant, in two forms.

- "decomposed": (q * d^-0.5) @ k^T + bias -> Softmax -> @ v as separate ops (every TensorRT 10.x parses it, and
  its fused multi-head attention matches this form).
- "fused": one `FusedAttention` call per layer, which the exporter writes as the ONNX `Attention` op (opset 23)
  with the baked bias as its additive mask; TensorRT 10.14+ parses it into its fused attention layer.

The bias is stored materialised, (1, heads, T, T), or gathered: a small table (R, heads) per layer and a shared
(T*T,) index (see bake.py for which and why). A gathered bias is gathered from the layer's own input's index (see
`BakedAttention.extra_bias`), so that ONNX Runtime cannot expand it back into full tensors at session creation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ExportError
from ..core.manifest import ATTENTION_FORMS, DECOMPOSED, FUSED  # noqa: F401 - the forms, importable from here
# The custom node the tracer writes for FusedAttention; onnx_graph turns it into the standard ONNX Attention op.
FUSED_DOMAIN, FUSED_OP = "beit_deploy", "Attention"


class BakedAttention(nn.Module):
    """BEiT self-attention with a constant additive bias, in the form TensorRT's fused attention matches.

    x (B, T, C) -> q, k, v (B, heads, T, d); softmax((q * d^-0.5) @ k^T + bias) @ v -> (B, T, C) -> o_proj.
    Shapes use Python ints for T, heads and d, so tracing records constant reshape targets with -1 batch.
    `fused`: the softmax part is one FusedAttention call (one ONNX Attention node once exported).
    """

    def __init__(self, attention: nn.Module, tokens: int, bias: torch.Tensor | None, index: torch.Tensor | None,
                 fused: bool = False):
        super().__init__()
        self.fused = fused
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.o_proj = attention.v_proj, attention.o_proj
        self.heads, self.head_dim = attention.num_attention_heads, attention.head_dim
        self.scaling, self.tokens = attention.scaling, tokens
        if bias is not None and index is not None:
            table = table_from_bias(bias, index)
            self.register_buffer("bias_table", table)
            self.register_buffer("bias_index", index)
            self.bias = None
        else:
            self.register_buffer("bias", bias)
            self.bias_table = self.bias_index = None

    def extra_bias(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The bias, (1, heads, T, T) or gathered from the table as (heads, T, T); both broadcast over batch.

        The gather's index is the shared index plus zero times this layer's batch size: the same numbers, but a
        value that depends on the layer's input. ONNX Runtime folds every node whose inputs are all constant at
        session creation, which would expand each table back into a full (heads, T, T) tensor (1.5 GiB for
        large@512) held for the session's life; and a gather of constants alone could be scheduled before the
        first layer, all layers' at once. Tied to the layer's input, one layer's full bias exists at a time,
        only while that layer runs. Rows of the (R, heads) table are gathered (axis 0, as transformers does):
        in ONNX Runtime about 4x faster than gathering single elements of a (heads, R) table on its last axis,
        even with the transpose after it.
        """
        if self.bias_table is None:
            return self.bias
        index = self.bias_index + torch._shape_as_tensor(hidden_states)[0] * 0
        gathered = self.bias_table[index].reshape(self.tokens, self.tokens, self.heads)
        return gathered.permute(2, 0, 1)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        if attention_mask is not None:
            raise ExportError("a baked BEiT attention got a runtime attention_mask; the bias is already baked in")
        if self.fused:
            return self._fused(hidden_states), None
        t, h, d = self.tokens, self.heads, self.head_dim
        q = (self.q_proj(hidden_states) * self.scaling).reshape(-1, t, h, d).transpose(1, 2)
        k = self.k_proj(hidden_states).reshape(-1, t, h, d).permute(0, 2, 3, 1)
        v = self.v_proj(hidden_states).reshape(-1, t, h, d).transpose(1, 2)
        scores = torch.matmul(q, k)
        bias = self.extra_bias(hidden_states)
        if bias is not None:
            scores = scores + bias
        # softmax in fp32 (as transformers does); written so an fp32 trace records no no-op Casts
        probs = torch.softmax(scores if scores.dtype == torch.float32 else scores.float(), dim=-1)
        probs = probs if probs.dtype == q.dtype else probs.to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(-1, t, h * d)
        return self.o_proj(out), None

    def _fused(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, heads, T, d) unscaled and the bias as a 4D (1, heads, T, T) mask (TensorRT's Attention
        importer takes 4D tensors only) into one FusedAttention call -> (B, T, C) -> o_proj."""
        t, h, d = self.tokens, self.heads, self.head_dim
        q, k, v = (proj(hidden_states).reshape(-1, t, h, d).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        bias = self.extra_bias(hidden_states)
        mask = None if bias is None else bias.reshape(1, h, t, t).to(q.dtype)
        out = FusedAttention.apply(q, k, v, mask, float(self.scaling))
        return self.o_proj(out.transpose(1, 2).reshape(-1, t, h * d))


class FusedAttention(torch.autograd.Function):
    """softmax(q @ k^T * scale + mask) @ v, softmax in fp32: q, k, v (B, heads, T, d), mask (1, heads, T, T) or
    None.

    In torch it computes exactly what the decomposed form does. Traced by the TorchScript exporter it is one
    node `beit_deploy::Attention(q, k, v, mask)` with the scale as an attribute, which onnx_graph rewrites into
    the standard ONNX `Attention` op (opset 23) once the graph is converted to that opset.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float):
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        scores = scores if mask is None else scores + mask
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)

    @staticmethod
    def symbolic(g, q, k, v, mask, scale: float):
        out = g.op(f"{FUSED_DOMAIN}::{FUSED_OP}", q, k, v, *([] if mask is None else [mask]), scale_f=scale)
        out.setType(q.type())
        return out


def table_from_bias(bias: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Invert the gather: table (R, heads) with table[index].view(T, T, heads).permute(2, 0, 1) == bias[0]."""
    heads = bias.shape[1]
    flat = bias[0].reshape(heads, -1).t()  # (T*T, heads)
    table = torch.zeros(int(index.max()) + 1, heads, dtype=bias.dtype)
    table[index] = flat
    if not torch.equal(table[index], flat):
        raise ExportError("the captured relative position bias is not a gather of one table; "
                          "this transformers version builds it differently: use the materialised bias mode")
    return table
