"""`beit-deploy triton`: a Triton Inference Server model repository generated from exports or engine folders.

For each export (a resolution folder) or engine folder (`beit-deploy build` output) it writes the four models of
configs.py. The Python-backend models get one static `model.py` (the same text for every stage and model: it
imports beit-deploy's stage code from the server's Python environment) and a copy of the export's
`manifest.json`, from which they read every setting at run time. Only files the manifest names inside the
source folder are copied, under plain names; the repository is written atomically (core.files.atomic_folder).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..core import backends, precisions
from ..core.engine_manifest import ENGINE_FILE, ENGINE_MANIFEST, EngineManifest, read_engine_manifest
from ..core.errors import ArtifactError, UsageError
from ..core.files import artifact_files, atomic_folder
from ..core.manifest import FILENAME, Manifest, read_manifest, resolution_folders
from ..core.progress import step
from . import configs
from .configs import MODEL, POSTPROCESS, PREPROCESS, Batching
from .pbtxt import to_pbtxt
from .readme import repository_readme

BACKENDS = backends.names(served=True)  # as they were when this module loaded; TritonOptions reads the table
INSTANCE_KINDS = ("gpu", "cpu")  # where Triton runs the model stage's instances
DEFAULT_MAX_BATCH = 8
PLAN_FILE = "model.plan"
MODEL_PY = '''"""A Triton Python-backend model written by `beit-deploy triton`; the same file serves every stage.

Which stage it is (preprocess, model or postprocess) comes from config.pbtxt's `beit_deploy.stage` parameter,
and every setting from the manifest.json beside this file. The code is beit-deploy's own, imported from the
Python environment the server runs in: `pip install beit-deploy` there (numpy < 2 for Triton 2.51's stub).
"""

from beit_deploy.serve.stages import TritonPythonModel  # noqa: F401
'''
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_TENSOR = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class TritonOptions:
    """How to serve. None means: chosen from the source (see `_batching` and `_backend`)."""

    out: Path = Path("model_repository")
    name: str | None = None  # the ensemble's name; default: the manifest's model (+ _<H>x<W> for several)
    backend: str | None = None  # tensorrt for an engine folder, python for an export
    precision: str = precisions.REFERENCE  # the ONNX graph of the python and onnxruntime stages (a float one)
    max_batch: int | None = None  # default 8, or the engine profile's MAX
    instances: int = 1
    instance_kind: str | None = None  # "gpu" | "cpu"; default gpu for tensorrt/onnxruntime
    max_queue_delay_us: int = 2000
    preferred_batch: tuple[int, ...] = ()  # default: the engine profile's OPT and MAX for tensorrt
    ort_tensorrt: bool = False  # onnxruntime stage: TensorRT execution accelerator
    top_k: int = 5  # classes per image when a request does not send TOP_K

    def __post_init__(self):
        served, floats = backends.names(served=True), precisions.names(making=precisions.FLOAT)
        if self.backend is not None and self.backend not in served:
            raise UsageError(f"backend '{self.backend}' is not one of {', '.join(served)}")
        if self.precision not in floats:
            raise UsageError(f"precision '{self.precision}' is not {' or '.join(floats)}")
        if self.instance_kind not in (None, *INSTANCE_KINDS):
            raise UsageError(f"instance kind '{self.instance_kind}' is not {' or '.join(INSTANCE_KINDS)}")
        for label, value in (("--max-batch-size", self.max_batch), ("--instances", self.instances),
                             ("--top-k", self.top_k), *(("--preferred-batch-size", b) for b in self.preferred_batch)):
            if value is not None and value < 1:
                raise UsageError(f"{label} must be at least 1, got {value}")
        if self.max_queue_delay_us < 0:
            raise UsageError(f"--max-queue-delay-us must be 0 or more, got {self.max_queue_delay_us}")


@dataclass(frozen=True)
class Source:
    """One folder to serve: an export's resolution folder, or an engine folder (engine set)."""

    folder: Path
    manifest: Manifest
    engine: EngineManifest | None = None


@dataclass(frozen=True)
class ServedModel:
    """What the repository serves for one source: the ensemble's name, its stages' names, the task."""

    name: str
    task: str
    backend: str
    stages: dict[str, str] = field(default_factory=dict)


def check_name(name: str, what: str) -> str:
    """`name` if it is safe as a Triton model name and folder name (letters, digits, _ . -; not . or ..)."""
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise UsageError(f"{what} '{name}' cannot name a Triton model: use letters, digits, '_', '.' and '-' "
                         "(at most 100, starting with a letter or digit), e.g. --served-model beit_base")
    return name


def sources(paths: list[Path]) -> list[Source]:
    """Every resolution folder under the given export or engine folders, with its manifest(s)."""
    found = []
    for path in map(Path, paths):
        for folder in resolution_folders(path).values():
            engine = read_engine_manifest(folder) if (folder / ENGINE_MANIFEST).is_file() else None
            found.append(Source(folder, read_manifest(folder), engine))
    return found


def write_repository(paths: list[Path], options: TritonOptions) -> list[ServedModel]:
    """Write the model repository `options.out` for the exports/engines at `paths` (replacing an earlier one)."""
    found = sources(paths)
    if options.name is not None and len(found) > 1:
        raise UsageError(f"--served-model names one model, and these paths hold {len(found)} resolutions: leave it "
                         "out (names then come from the manifests)")
    names = [check_name(options.name, "--served-model") if options.name is not None
             else _default_name(s, len(found) > 1) for s in found]
    folders = [n for name in names for n in (name, *configs.stage_names(name).values())]
    if len(set(folders)) < len(folders):
        raise UsageError(f"two models would both be named {sorted(n for n in folders if folders.count(n) > 1)[0]}:"
                         " serve them in separate repositories or choose other names")
    _check_out(Path(options.out), found)
    served = []
    with atomic_folder(Path(options.out), ours=_is_repository) as tmp:
        with step(f"writing the model repository {options.out} ({len(found)} model(s))", total=len(found),
                  unit="model") as writing:
            for source, name in zip(found, names):
                served.append(_write_models(tmp, source, name, options))
                writing.advance()
        (tmp / "README.md").write_text(repository_readme(served, Path(options.out)))
    return served


def _check_out(out: Path, found: list[Source]) -> None:
    """`out` is replaced as a whole: never an export or engine folder (or one holding them), never a folder
    that is not a model repository this command wrote."""
    target = out.resolve()
    for source in found:
        folder = source.folder.resolve()
        if target == folder or target in folder.parents or folder in target.parents:
            raise UsageError(f"--out {out} would replace or sit inside {source.folder}, which it serves: write the "
                             "repository elsewhere, e.g. --out model_repository")
    if out.exists() and any(out.iterdir()) and not _is_repository(out):
        raise UsageError(f"'{out}' exists and is not a model repository (it would be replaced as a whole): choose "
                         "another --out, or remove it first")


def _is_repository(folder: Path) -> bool:
    """A model repository (this command's or another's): folders with a config.pbtxt in them."""
    return any(Path(folder).glob("*/config.pbtxt"))


def _default_name(source: Source, several: bool) -> str:
    m = source.manifest
    name = check_name(m.model, f"the model name in {source.folder / FILENAME}")
    return check_name(f"{name}_{m.resolution[0]}x{m.resolution[1]}", "model name") if several else name


def _backend(source: Source, options: TritonOptions) -> backends.Backend:
    """The model stage's backend: as asked, else TensorRT for an engine folder and python for an export."""
    row = backends.backend(options.backend or (backends.TENSORRT if source.engine else backends.PYTHON).name)
    if row.opens == backends.ENGINE and source.engine is None:
        raise UsageError(f"--backend {row.name} needs an engine folder and '{source.folder}' is an export: build an "
                         f"engine first (beit-deploy build {source.folder}) and pass its folder")
    if row.opens != backends.ENGINE and source.engine is not None:
        raise UsageError(f"'{source.folder}' is an engine folder, which holds no ONNX graph for --backend {row.name}:"
                         " pass the export folder instead")
    return row


def _batching(source: Source, backend: backends.Backend, options: TritonOptions) -> Batching:
    """Batch limits: an engine's come from its profile (and may not be exceeded), an ONNX graph's from options."""
    max_batch, preferred = options.max_batch or DEFAULT_MAX_BATCH, options.preferred_batch
    if source.engine is not None:
        low, opt, high = _profile_batch(source)
        if options.max_batch and options.max_batch > high:
            raise UsageError(f"--max-batch-size {options.max_batch} is above the engine's profile ({low}:{opt}:{high}):"
                             f" use at most {high}, or rebuild with a larger --batch-profile")
        max_batch = options.max_batch or high
        preferred = preferred or tuple(sorted({min(opt, max_batch), max_batch}))
    if any(b > max_batch for b in preferred):
        raise UsageError(f"--preferred-batch-size {list(preferred)} goes above the max batch {max_batch}")
    gpu = (options.instance_kind or backend.instances) == "gpu"
    return Batching(max_batch, options.instances, "KIND_GPU" if gpu else "KIND_CPU", options.max_queue_delay_us,
                    preferred)


def _profile_batch(source: Source) -> tuple[int, int, int]:
    """(MIN, OPT, MAX) batch of the engine's profile, the same for every input (as `beit-deploy build` makes it)."""
    profile = source.engine.profile
    batches = {tuple(int(shapes[k][0]) for k in ("min", "opt", "max")) for shapes in profile.values()}
    if set(profile) != {s.name for s in source.manifest.inputs} or len(batches) != 1:
        raise ArtifactError(f"{source.folder / ENGINE_MANIFEST} has a profile for {sorted(profile)} that does not "
                            "match its manifest's inputs with one batch range: build the engine again")
    low, opt, high = batches.pop()
    if low != 1:
        raise UsageError(f"the engine in {source.folder} takes batches from {low} and Triton sends batches from 1: "
                         "rebuild it with --batch-profile 1:OPT:MAX")
    return low, opt, high


def _write_models(root: Path, source: Source, name: str, options: TritonOptions) -> ServedModel:
    backend, m = _backend(source, options), source.manifest
    for spec in (*m.inputs, *m.outputs):
        if not _TENSOR.fullmatch(spec.name):
            raise ArtifactError(f"{source.folder / FILENAME} names a tensor '{spec.name}', which is not a plain "
                                "name: export the model again")
    batching, stages = _batching(source, backend, options), configs.stage_names(name)
    file = _model_file(source, backend, options.precision)
    target = PLAN_FILE if backend.opens == backends.ENGINE else file.name
    _model_folder(root / stages[PREPROCESS], configs.preprocess_config(stages[PREPROCESS], m, batching), source)
    _model_folder(root / stages[MODEL], configs.model_config(stages[MODEL], m, batching, backend.name, target,
                                                             options.precision, options.ort_tensorrt),
                  source, python=backend.ours, files=[file], rename={file.name: target})
    _model_folder(root / stages[POSTPROCESS], configs.postprocess_config(stages[POSTPROCESS], m, batching,
                                                                         options.top_k), source)
    _model_folder(root / name, configs.ensemble_config(name, m, batching, options.top_k), source, python=False)
    return ServedModel(name, m.task, backend.name, stages)


def _model_file(source: Source, backend: backends.Backend, precision: str) -> Path:
    """The engine, or the chosen ONNX graph, as a plain file name inside the source folder."""
    if backend.opens == backends.ENGINE:
        return _inside(source.folder, ENGINE_FILE)
    if precision not in source.manifest.artifacts:
        raise UsageError(f"{source.folder} has no {precision} graph (it has: "
                         f"{', '.join(source.manifest.artifacts)}): export with {precisions.precision(precision).flag}"
                         f", or pass --precision {precisions.REFERENCE}")
    return _inside(source.folder, source.manifest.artifacts[precision])


def _inside(folder: Path, name: str) -> Path:
    """folder/name for a plain file name that exists; ArtifactError for anything else (paths, links out)."""
    path = folder / name
    if Path(name).name != name or name in ("", ".", "..") or not path.is_file() or path.is_symlink():
        raise ArtifactError(f"'{folder}' should hold the file '{name}' that its manifest names, as a plain file: "
                            "export (or build) again")
    return path


def _model_folder(folder: Path, config: dict, source: Source, python: bool = True, files=(), rename=None) -> None:
    """<model>/config.pbtxt and <model>/1/: model.py + manifest.json for Python models, and copies of `files`
    (with any external data), renamed by `rename`. Copies, not links: editing the repository never touches the
    export."""
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(to_pbtxt(config) + "\n")
    if python:
        (version / "model.py").write_text(MODEL_PY)
        shutil.copyfile(_inside(source.folder, FILENAME), version / FILENAME)
    for file in files:
        for part in artifact_files(file.parent, file.name):
            shutil.copyfile(part, version / (rename or {}).get(part.name, part.name))
