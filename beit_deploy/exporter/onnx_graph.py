"""Trace a baked BEiT to ONNX: one graph per resolution, dynamic batch only, shape arithmetic folded.

Pipeline: `bake.bake()` (constant bias) -> TorchScript exporter without its own constant folding (it would
expand the gathered bias back into full tensors) -> onnxscript's constant folding and onnx_ir's clean-up passes,
told to leave the bias Gathers alone -> saved with external data when the weights pass ONNX's 2 GB protobuf limit.

The fused attention form traces each layer's attention as a `beit_deploy::Attention` node (attention.FusedAttention),
converts the graph to opset 23 with ONNX's version converter (ReduceMean's axes become an input, ...), and then
makes those nodes the standard ONNX `Attention` op: 4D q, k, v (B, heads, T, d), the bias as the additive
`attn_mask`, `scale` = d^-0.5 and `softmax_precision` = FLOAT. Opset 23 because it is the first with Attention:
ONNX Runtime 1.32 runs it (CPU, fp32 and fp16), TensorRT's parser takes it from 10.14 on (opsets 9-24).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core import tasks
from ..core.errors import ExportError, describe
from ..core.manifest import TensorSpec
from ..core.progress import step
from .graph_files import save_ir, tensor_specs

OPSET = 17  # LayerNormalization is a single node from opset 17 on.
FUSED_OPSET = 23  # the first opset with the Attention op
SOFTMAX_FP32 = 1  # onnx.TensorProto.FLOAT: the Attention op's softmax_precision
# Ops that would mean the bias (or other shape logic) is rebuilt at run time.
FORBIDDEN_OPS = frozenset({"Range", "ScatterND", "Where", "Equal", "Resize", "ConstantOfShape", "Loop", "If"})
# UperNet's decoder resizes feature maps by design; that Resize is not bias logic.
ALLOWED_RESIZE_SCOPE = "/decode_head/"


class GraphModule(nn.Module):
    """The baked model as a function of named tensors, returning transformers' outputs in a fixed order.

    Segmentation follows `BeitForSemanticSegmentation.forward` (features = hidden_states[i - 1] for i in
    out_indices, cls dropped, reshaped to (B, C, H/16, W/16), FPN, UperNet) with constant reshape targets; the
    auxiliary head is not part of it. Parity against the unmodified model is checked at every export.
    """

    def __init__(self, baked: nn.Module, task: str, resolution: tuple[int, int]):
        super().__init__()
        self.m, self.task = baked, tasks.task(task)
        patch = baked.config.patch_size
        self.grid = (resolution[0] // patch, resolution[1] // patch)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None):
        if self.task.decoder:
            return (self._segment(pixel_values),)
        kwargs = {"bool_masked_pos": bool_masked_pos} if bool_masked_pos is not None else {}
        out = self.m(pixel_values, **kwargs)
        return tuple(out[name] for name in self.task.outputs)

    def _segment(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.m.beit(pixel_values, output_hidden_states=True).hidden_states
        channels = self.m.config.hidden_size
        features = tuple(hidden[i - 1][:, 1:].transpose(1, 2).reshape(-1, channels, *self.grid)
                         for i in self.m.config.out_indices)
        return self.m.decode_head(self.m.fpn(features))


def onnx_from_model(baked: nn.Module, task: str, resolution: tuple[int, int], path: Path) -> Path:
    """Write the ONNX graph of `baked` at `resolution` (inputs (B, 3, H, W) [+ (B, N) bool]) to `path`.

    A model baked with the fused attention form gets an opset-23 graph with one Attention node per layer."""
    import onnx_ir as ir

    specs = tasks.input_specs(task, baked.config, resolution)
    example = tuple(_example(spec, batch=2) for spec in specs)
    names = tasks.task(task).outputs
    axes = {spec.name: {0: "batch"} for spec in specs} | {name: {0: "batch"} for name in names}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "traced.onnx"
        module = GraphModule(baked, task, resolution).eval()
        with step("tracing to ONNX"):
            try:  # no_grad: tracing records no autograd state; no params: the weights are attached below
                with torch.no_grad():
                    torch.onnx.export(module, example, str(raw), dynamo=False, input_names=[s.name for s in specs],
                                      output_names=list(names), dynamic_axes=axes, opset_version=OPSET,
                                      do_constant_folding=False, export_params=False)
            except Exception as exc:  # the exporter raises many types
                raise ExportError(f"tracing {task} at {resolution[0]}x{resolution[1]} failed: "
                                  f"{describe(exc, 300)}") from exc
        if _has_fused_attention(baked):
            with step(f"converting to opset {FUSED_OPSET} with one Attention node per layer"):
                raw = fused_attention_graph(raw, Path(tmp) / "fused.onnx")
        with step("folding shapes and constants"):
            model = ir.load(raw)
            attach_weights(model, module.state_dict(), {s.name for s in specs})
            fold(model)
            save_ir(model, path)
    return path


def attach_weights(model, state: dict, inputs: set[str]) -> None:
    """Make the weights of a graph traced without them (`export_params=False`) its initializers, in place.

    The exporter then names each weight's graph input after its state-dict entry; every such input becomes an
    initializer holding that tensor's own memory (a numpy view, no copy). Traced with its weights, the exporter
    would hold two more copies of them at once (its ModelProto and the serialised bytes).
    """
    import onnx_ir as ir

    for value in [v for v in model.graph.inputs if v.name not in inputs]:
        if value.name not in state:
            raise ExportError(f"the traced graph takes '{value.name}', which is neither an input nor a weight of "
                              "the model: this is a beit-deploy bug, please report it with the model")
        model.graph.inputs.remove(value)
        value.const_value = ir.Tensor(state[value.name].detach().contiguous().numpy(), name=value.name)
        model.graph.register_initializer(value)


def fold(model) -> None:
    """Fold shape arithmetic and the weight transposes of an onnx_ir model, in place.

    onnxscript's `optimize_ir` without its pattern rewriter (and initializer de-duplication, see below): the
    rewriter's module-level rules keep the last graph they matched alive (microsoft/onnxscript#2526), i.e. a
    second copy of the weights for the rest of the export. The one rewrite our graphs needed, dropping no-op
    Casts, BakedAttention makes unnecessary by not emitting them.
    """
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants

    common.InlinePass()(model)
    for _ in range(2):
        fold_constants(model, onnx_shape_inference=True, should_fold=_keep_bias_gathers)
        for cleanup in (common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                        common.RemoveUnusedOpsetsPass()):
            cleanup(model)
    # No DeduplicateInitializersPass: one initializer shared by a quantizable op and a float one (equal zero biases
    # of the patch Conv and a LayerNorm, say) would be dequantized for both by the Q/DQ quantizers.
    for finish in (common.RemoveUnusedNodesPass(),
                   common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                   common.LiftSubgraphInitializersToMainGraphPass(), common.CommonSubexpressionEliminationPass(),
                   common.OutputFixPass(), common.NameFixPass()):
        finish(model)


def _has_fused_attention(baked: nn.Module) -> bool:
    return any(getattr(module, "fused", False) for module in baked.modules())


def fused_attention_graph(raw: Path, path: Path) -> Path:
    """The traced graph at `raw` (opset 17, `beit_deploy::Attention` nodes) as an opset-23 graph with standard
    ONNX Attention nodes, saved to `path` (beside `raw`, so external weights, if any, stay where they are)."""
    import onnx
    from onnx import version_converter

    from .attention import FUSED_DOMAIN, FUSED_OP

    model = onnx.load(str(raw), load_external_data=False)
    model = version_converter.convert_version(model, FUSED_OPSET)
    found = 0
    for node in model.graph.node:
        if node.domain == FUSED_DOMAIN and node.op_type == FUSED_OP:
            scale = next(a.f for a in node.attribute if a.name == "scale")
            node.domain = ""
            del node.attribute[:]
            node.attribute.extend([onnx.helper.make_attribute("scale", scale),
                                   onnx.helper.make_attribute("softmax_precision", SOFTMAX_FP32)])
            found += 1
    if not found:
        raise ExportError("the fused attention form traced no Attention node; this is a beit-deploy bug: please "
                          "report it with the model and resolution")
    kept = [o for o in model.opset_import if o.domain != FUSED_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(kept))  # the converter keeps 8
    onnx.save(model, str(path))
    return path


def _keep_bias_gathers(node) -> bool | None:
    """Don't let constant folding expand the gathered bias (table[index]) back into a full tensor."""
    if node.op_type == "Gather" and "/attention/" in (node.name or ""):
        return False
    return None


def _example(spec: TensorSpec, batch: int) -> torch.Tensor:
    shape = [batch if d == "batch" else d for d in spec.shape]
    if spec.dtype == "bool":
        return torch.rand(shape) > 0.5
    return torch.randn(shape)


def forbidden_nodes(model) -> list[str]:
    """Names of nodes that rebuild shapes or the bias at run time (UperNet's own Resize excepted)."""
    return [f"{node.op_type} {node.name}" for node in model.graph.node
            if node.op_type in FORBIDDEN_OPS
            and not (node.op_type == "Resize" and ALLOWED_RESIZE_SCOPE in node.name)]


def check_graph(model) -> None:
    """Raise ExportError if a graph rebuilds anything at run time or its batch axis is not the only dynamic one."""
    bad = forbidden_nodes(model)
    if bad:
        raise ExportError(f"the ONNX graph still rebuilds shapes at run time ({', '.join(bad[:5])}); "
                          "this is a beit-deploy bug: please report it with the model and resolution")
    for spec in tensor_specs(model.graph.output):
        if any(isinstance(d, str) for d in spec.shape[1:]) or spec.shape[0] != "batch":
            raise ExportError(f"output {spec.name} has shape {list(spec.shape)}; expected a dynamic batch only")
