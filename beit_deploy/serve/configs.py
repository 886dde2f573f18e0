"""The four Triton model configs of one served export: preprocess -> model -> postprocess, and their ensemble.

    <name>              ensemble: IMAGE (encoded bytes) [+ TOP_K] in, the task's answer tensors + IMAGE_SIZE out
    <name>_preprocess   python: bytes -> the graph's inputs, with beit-deploy's preprocessing, + each image's size
    <name>_model        tensorrt_plan | onnxruntime_onnx | python (beit-deploy's ONNX Runtime backend)
    <name>_postprocess  python: the graph's output -> answers (runtime/answers.py, runtime/wire.py)

Every value here is a number, an enum, or a name that `repository.check_name` accepted; labels travel as one
escaped JSON string parameter of the ensemble (for beit-deploy's client), in the ensemble's labels.txt (Triton's
`label_filename`, one class a line, so the classification extension answers class ids and names) and in the
manifest.json copies. Only classifiers take `TOP_K`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import __version__
from ..core import backends, tasks
from ..core.errors import ArtifactError
from ..core.manifest import Manifest, TensorSpec
from ..runtime import answers as answer_kinds, wire
from .pbtxt import Enum

LABELS_FILE = "labels.txt"
STAGE = "beit_deploy.stage"  # parameter naming a Python-backend model's stage
PREPROCESS, MODEL, POSTPROCESS = "preprocess", "model", "postprocess"
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
          "int32": "TYPE_INT32", "uint16": "TYPE_UINT16", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING",
          "uint8": "TYPE_UINT8"}
PLATFORMS = {b.name: b.triton for b in backends.BACKENDS.values() if b.triton is not None}


@dataclass(frozen=True)
class Batching:
    """Batch limits and scheduling shared by the stages. `kind`: "KIND_GPU" or "KIND_CPU" for the model stage."""

    max_batch: int
    instances: int
    kind: str
    max_queue_delay_us: int
    preferred: tuple[int, ...] = ()


def stage_names(name: str) -> dict[str, str]:
    """Model names of the three stages of the ensemble `name`."""
    return {stage: f"{name}_{stage}" for stage in (PREPROCESS, MODEL, POSTPROCESS)}


def tensor(name: str, dtype: str, dims, optional: bool = False, label_filename: str | None = None) -> dict:
    """One config input/output. `dims` excludes the batch axis; ArtifactError for a symbolic or unknown one."""
    if dtype not in _TYPES:
        raise ArtifactError(f"tensor '{name}' has dtype {dtype}, which beit-deploy cannot serve: export again")
    if not dims or any(not isinstance(d, int) or (d < 1 and d != -1) for d in dims):
        raise ArtifactError(f"tensor '{name}' has dims {list(dims)} beyond the batch axis; Triton needs fixed "
                            "sizes (or -1): export again")
    extra = {**({"optional": True} if optional else {}),
             **({"label_filename": label_filename} if label_filename else {})}
    return {"name": name, "data_type": Enum(_TYPES[dtype]), "dims": list(dims), **extra}


def takes_top_k(manifest: Manifest) -> bool:
    """Whether the ensemble takes TOP_K: classifiers only (a label map has no top-k)."""
    return answer_kinds.of(manifest.task).top_k


def labels_text(manifest: Manifest) -> str:
    """labels.txt for Triton's `label_filename`: line i names class i (its id where the manifest has no name;
    line breaks in a name become spaces)."""
    source = _answer_spec(manifest)
    count = int(source.shape[1]) if takes_top_k(manifest) and len(source.shape) > 1 else len(manifest.labels)
    names = (" ".join(str(manifest.labels.get(i, i)).splitlines()) for i in range(count))
    return "".join(f"{name}\n" for name in names)


def _outputs(manifest: Manifest) -> list[dict]:
    return [tensor(w.name, w.dtype, w.dims, label_filename=LABELS_FILE if w.name == wire.PROBABILITIES else None)
            for w in wire.wire_outputs(manifest)]


def _spec(spec: TensorSpec) -> dict:
    return tensor(spec.name, spec.dtype, spec.shape[1:])


def _common(batching: Batching, kind: str, preferred: tuple[int, ...] = ()) -> dict:
    delay = {"max_queue_delay_microseconds": batching.max_queue_delay_us}
    return {"max_batch_size": batching.max_batch,
            "dynamic_batching": {**({"preferred_batch_size": list(preferred)} if preferred else {}), **delay},
            "instance_group": [{"count": batching.instances, "kind": Enum(kind)}]}


def _params(values: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def preprocess_config(name: str, manifest: Manifest, batching: Batching) -> dict:
    outputs = [_spec(s) for s in manifest.inputs] + [tensor(wire.IMAGE_SIZE, "int64", [2])]
    return {"name": name, "backend": "python", "input": [tensor(wire.IMAGE, "bytes", [1])], "output": outputs,
            **_common(batching, "KIND_CPU"), "parameters": _params({STAGE: PREPROCESS})}


def model_config(name: str, manifest: Manifest, batching: Batching, backend: str, file: str,
                 precision: str, accelerator: bool) -> dict:
    """The model stage. `file`: the engine or graph in the version folder (tensorrt, onnxruntime); `accelerator`:
    ONNX Runtime's TensorRT execution accelerator on GPU instances."""
    config = {"name": name, **PLATFORMS[backend], "input": [_spec(s) for s in manifest.inputs],
              "output": [_spec(s) for s in manifest.outputs]}
    if backends.backend(backend).ours:  # its file is model.py; the stage finds the ONNX graph through the manifest
        config.update(_common(batching, "KIND_CPU", batching.preferred))
        config["parameters"] = _params({STAGE: MODEL, "precision": precision})
    else:
        config.update(default_model_filename=file, **_common(batching, batching.kind, batching.preferred))
    if accelerator:
        precision_mode = {"precision_mode": {"fp16": "FP16", "int8": "INT8"}.get(precision, "FP32")}
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in precision_mode.items()]}]}}
    return config


def _answer_spec(manifest: Manifest) -> TensorSpec:
    return next(s for s in manifest.outputs if s.name == tasks.task(manifest.task).answer_from)


def postprocess_config(name: str, manifest: Manifest, batching: Batching, top_k: int) -> dict:
    inputs = [_spec(_answer_spec(manifest)), tensor(wire.IMAGE_SIZE, "int64", [2])]
    inputs += [tensor(wire.TOP_K_INPUT, "int32", [1], optional=True)] if takes_top_k(manifest) else []
    outputs = [tensor(w.name, w.dtype, w.dims) for w in wire.wire_outputs(manifest)]
    return {"name": name, "backend": "python", "input": inputs, "output": outputs, **_common(batching, "KIND_CPU"),
            "parameters": _params({STAGE: POSTPROCESS, "top_k": top_k})}


def ensemble_config(name: str, manifest: Manifest, batching: Batching, top_k: int) -> dict:
    """Image bytes in, answers out; parameters tell clients the task, resolution, labels and default top-k."""
    stages, answer, top_k_in = stage_names(name), _answer_spec(manifest).name, takes_top_k(manifest)
    graph_inputs = [s.name for s in manifest.inputs]
    answers = [w.name for w in wire.wire_outputs(manifest)]
    steps = [
        _step(stages[PREPROCESS], {wire.IMAGE: wire.IMAGE}, {n: n for n in graph_inputs + [wire.IMAGE_SIZE]}),
        _step(stages[MODEL], {n: n for n in graph_inputs}, {answer: answer}),
        _step(stages[POSTPROCESS], {n: n for n in (answer, wire.IMAGE_SIZE, wire.TOP_K_INPUT)[:3 if top_k_in else 2]
                                    }, {n: n for n in answers}),
    ]
    outputs = _outputs(manifest)
    params = {"task": manifest.task, "model": manifest.model, "resolution": "x".join(map(str, manifest.resolution)),
              "top_k": top_k, "labels": json.dumps({str(k): v for k, v in sorted(manifest.labels.items())}),
              "beit_deploy": __version__}
    return {"name": name, "platform": "ensemble", "max_batch_size": batching.max_batch,
            "input": [tensor(wire.IMAGE, "bytes", [1])] + ([tensor(wire.TOP_K_INPUT, "int32", [1], optional=True)]
                                                            if top_k_in else []),
            "output": outputs + [tensor(wire.IMAGE_SIZE, "int64", [2])],
            "ensemble_scheduling": {"step": steps}, "parameters": _params(params)}


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    return {"model_name": model, "model_version": -1,
            "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
            "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}
