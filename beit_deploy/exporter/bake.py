"""Bake BEiT's relative position bias for one input resolution.

transformers rebuilds the bias at every forward: it resizes each (2Wh-1)(2Ww-1)+3 x heads table bilinearly to
the input's window, gathers it with a (N+1)^2 index, sums the shared and per-layer parts and hands the result to
attention as an additive `attention_mask` (1, heads, N+1, N+1). Traced, that is thousands of nodes, and frozen to
the traced size. Here we run the installed transformers once at the target size, capture exactly the mask each
layer's attention receives, and replace every attention with `attention.BakedAttention`, which adds it as a
constant.

Two storage forms, chosen by size (see `choose_bias_mode`):
- "materialised": one (1, heads, T, T) constant per layer (T = N+1). Fewest ops; file and engine grow with T^2.
- "gathered": one small table (R, heads) per layer plus one (T*T,) index shared by all layers, and a Gather per
  layer at run time. The table is read back from the captured bias, so gathering reproduces it bit for bit.

Two attention forms (`attention=`):
- "decomposed": (q * d^-0.5) @ k^T + bias -> Softmax -> @ v as separate ops (every TensorRT 10.x parses it).
- "fused": one `attention.FusedAttention` call per layer, which the exporter writes as the ONNX `Attention` op
  (opset 23) with the baked bias as its additive mask; TensorRT 10.14+ parses it into its fused attention layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core import tasks
from ..core.errors import ExportError
from ..core.manifest import BIAS_MODES, GATHERED, MATERIALISED  # noqa: F401 - the modes, importable from here
from .attention import ATTENTION_FORMS, DECOMPOSED, FUSED, BakedAttention  # the forms, re-exported
from .loading import native_resolution

# Above this many bytes of materialised fp32 bias in all layers, store tables + a shared index instead.
MATERIALISED_LIMIT_BYTES = 256 * 2**20


def window_of(config, resolution: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (Wh, Ww) of an input of `resolution` (H, W)."""
    patch = config.patch_size
    return resolution[0] // patch, resolution[1] // patch


def bias_bytes(config, resolution: tuple[int, int]) -> int:
    """Bytes of a materialised fp32 bias over all layers: layers x heads x (N+1)^2 x 4."""
    wh, ww = window_of(config, resolution)
    return config.num_hidden_layers * config.num_attention_heads * (wh * ww + 1) ** 2 * 4


def choose_bias_mode(config, resolution: tuple[int, int]) -> str:
    return MATERIALISED if bias_bytes(config, resolution) <= MATERIALISED_LIMIT_BYTES else GATHERED


def beit_of(model) -> nn.Module:
    """The BeitModel inside any BEiT head (or the model itself)."""
    return getattr(model, "beit", model)


@torch.no_grad()
def capture_biases(model, resolution: tuple[int, int]) -> list[torch.Tensor | None]:
    """The additive mask each layer's attention receives for an input of `resolution`: (1, heads, T, T) or None.

    Runs the unmodified eager model once on zeros of shape (1, 3, H, W) and records the `attention_mask`
    keyword of every `layer.attention` call, i.e. shared + per-layer bias as the installed transformers builds it.
    """
    layers = _layers(model)
    captured: list[torch.Tensor | None] = [None] * len(layers)

    def recorder(index):
        def hook(_module, _args, kwargs):
            mask = kwargs.get("attention_mask")
            captured[index] = None if mask is None else mask.detach().clone()
        return hook

    handles = [layer.attention.register_forward_pre_hook(recorder(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        pixel_values = torch.zeros(1, model.config.num_channels, *resolution)
        kwargs = {"bool_masked_pos": torch.zeros(1, _num_patches(model.config, resolution), dtype=torch.bool)} \
            if _takes_mask(model) else {}
        model.eval()(pixel_values, **kwargs, **eager_kwargs(model, resolution))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def eager_kwargs(model, resolution: tuple[int, int]) -> dict:
    """Extra keyword arguments for calling the eager model at `resolution`, as a user would.

    Absolute position embeddings (microsoft/dit-*) only work at another size with interpolate_pos_encoding=True.
    """
    absolute = beit_of(model).embeddings.position_embeddings is not None
    other_size = tuple(resolution) != native_resolution(model.config)
    return {"interpolate_pos_encoding": True} if absolute and other_size else {}


def bake(model, resolution: tuple[int, int], mode: str | None = None, attention: str = DECOMPOSED) -> nn.Module:
    """A copy of `model` whose outputs at `resolution` equal the original's, with constant attention biases.

    The copy only works at `resolution` (the bias is frozen to its window), at any batch size. It shares every
    weight tensor with `model` (the module tree is new, the parameters are the same objects): baking costs the
    bias, not a second model. Neither model may be changed in place afterwards. `attention`: DECOMPOSED or FUSED
    (see the module docstring); both compute the same numbers in torch.
    """
    if attention not in ATTENTION_FORMS:
        raise ExportError(f"attention form '{attention}' is not one of {', '.join(ATTENTION_FORMS)}")
    mode = mode or choose_bias_mode(model.config, resolution)
    biases = capture_biases(model, resolution)
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}  # weights are shared, not copied
    baked = copy.deepcopy(model, memo=shared).eval()
    beit = beit_of(baked)
    tokens = _num_patches(model.config, resolution) + 1
    index = _shared_index(model.config, resolution) if mode == GATHERED else None
    for layer, bias in zip(_layers(baked), biases):
        layer.relative_position_bias = None
        layer.attention = BakedAttention(layer.attention, tokens, bias, index, fused=attention == FUSED)
    beit.shared_position_bias = None
    beit.embeddings = BakedEmbeddings(beit.embeddings, resolution)
    if getattr(baked, "decode_head", None) is not None:
        baked.auxiliary_head = None  # its logits are never returned; keep it out of the graph
        grid = window_of(model.config, resolution)
        for block in baked.decode_head.psp_modules.blocks:
            block.pooling = FixedAdaptiveAvgPool((grid[0] // 2, grid[1] // 2), block.pooling.output_size)
        baked.decode_head = FixedSizeResizes(baked.decode_head)
    return baked


class BakedEmbeddings(nn.Module):
    """BEiT embeddings for one resolution, written so the traced graph has no runtime shape arithmetic.

    pixel_values (B, 3, H, W) -> patches (B, N, C); masked patches (MIM) -> mask token; prepend cls and add the
    absolute position embedding (if any) as one constant: [0; x] + [cls + pos_0; pos_1..N].
    Adding exact zeros keeps every value bit-identical to transformers' cat-then-add.
    """

    def __init__(self, embeddings: nn.Module, resolution: tuple[int, int]):
        super().__init__()
        self.projection = embeddings.patch_embeddings.projection
        self.mask_token = embeddings.mask_token
        hidden = self.projection.out_channels
        self.hidden, self.patches = hidden, _num_patches_of(self.projection, resolution)
        prefix = torch.zeros(1, self.patches + 1, hidden)
        prefix[:, :1] = embeddings.cls_token.detach()
        if embeddings.position_embeddings is not None:
            with torch.no_grad():
                prefix = prefix + embeddings.interpolate_pos_encoding(prefix, *resolution)
        self.register_buffer("prefix", prefix)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = self.projection(pixel_values).reshape(-1, self.hidden, self.patches).transpose(1, 2)
        if bool_masked_pos is not None:
            w = bool_masked_pos.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token * w
        return torch.cat((x[:, :1] * 0, x), dim=1) + self.prefix


class FixedSizeResizes(nn.Module):
    """UperNet with its resize targets as plain ints, so a trace records constant sizes, not shape arithmetic.

    transformers' head calls `nn.functional.interpolate(x, size=other.shape[2:])`; traced, each size is a
    Shape -> Slice -> Concat chain. At one fixed resolution the sizes are known, so while the head runs,
    `interpolate` gets them as ints. The arithmetic is unchanged: same op, same sizes.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features):
        functional = nn.functional
        interpolate = functional.interpolate

        def fixed(x, size=None, *args, **kwargs):
            return interpolate(x, None if size is None else tuple(int(s) for s in size), *args, **kwargs)

        functional.interpolate = fixed
        try:
            return self.head(features)
        finally:
            functional.interpolate = interpolate


class FixedAdaptiveAvgPool(nn.Module):
    """`nn.AdaptiveAvgPool2d` for one known input size, as two matmuls with constant averaging matrices.

    ONNX exporters only handle adaptive pooling when the input divides evenly (640 px: 20x20 pooled to 3x3 and
    6x6 does not). x (B, C, H, W) -> rows (h, H) @ x @ cols (w, W)^T -> (B, C, h, w), with torch's bins
    [floor(i*H/h), ceil((i+1)*H/h)).
    """

    def __init__(self, in_size: tuple[int, int], out_size):
        super().__init__()
        out = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
        self.register_buffer("rows", _averaging_matrix(in_size[0], out[0]))
        self.register_buffer("cols", _averaging_matrix(in_size[1], out[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols.t())


def _averaging_matrix(size: int, bins: int) -> torch.Tensor:
    matrix = torch.zeros(bins, size)
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _shared_index(config, resolution: tuple[int, int]) -> torch.Tensor:
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    return BeitRelativePositionBias.generate_relative_position_index(window_of(config, resolution)).reshape(-1)


def _layers(model) -> nn.ModuleList:
    beit = beit_of(model)
    layers = getattr(beit, "layers", None)
    if layers is None or not all(hasattr(layer.attention, "q_proj") for layer in layers):
        import transformers

        raise ExportError(f"transformers {transformers.__version__} lays out BEiT differently from what "
                          "beit-deploy supports (beit.layers[i].attention.q_proj): install transformers>=5.17,<6")
    return layers


def _num_patches(config, resolution: tuple[int, int]) -> int:
    wh, ww = window_of(config, resolution)
    return wh * ww


def _num_patches_of(projection: nn.Conv2d, resolution: tuple[int, int]) -> int:
    return (resolution[0] // projection.stride[0]) * (resolution[1] // projection.stride[1])


def _takes_mask(model) -> bool:
    return tasks.task_of_architecture(type(model).__name__).takes_mask
