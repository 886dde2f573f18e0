"""`beit-deploy triton`: a Triton Inference Server model repository generated from exports or engine folders.

For each export (a resolution folder) or engine folder (`beit-deploy build` output) it adds the four models of
configs.py to the repository. The Python-backend models get one static `model.py` (the same text for every stage
and model: it imports beit-deploy's stage code from the server's Python environment) and a copy of the export's
`manifest.json`, from which they read every setting at run time. Only files the manifest names inside the
source folder are copied, under plain names, each checked against the manifest's sha256 as it is written.
Each model folder is written aside and swapped in whole (core.files.atomic_folder), and only over a folder that
carries beit-deploy's mark (marks.py): the repository's other models and files are never touched.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core import backends, precisions
from ..core.engine_manifest import ENGINE_FILE, ENGINE_MANIFEST, EngineManifest, read_engine_manifest
from ..core.errors import ArtifactError, UsageError
from ..core.files import atomic_folder
from ..core.manifest import FILENAME, Manifest, check_artifact, read_manifest, resolution_folders
from ..core.progress import say, step
from . import configs, marks
from .configs import MODEL, POSTPROCESS, PREPROCESS, Batching
from .marks import MODEL_PY
from .pbtxt import to_pbtxt
from .readme import README_TITLE, repository_readme

BACKENDS = backends.names(served=True)  # as they were when this module loaded; TritonOptions reads the table
INSTANCE_KINDS = ("gpu", "cpu")  # where Triton runs the model stage's instances
DEFAULT_MAX_BATCH = 8
PLAN_FILE = "model.plan"
MAX_INSTANCES = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_TENSOR = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class TritonOptions:
    """How to serve. None means: chosen from the source (see `_batching` and `_backend`)."""

    out: Path = Path("model_repository")
    name: str | None = None  # the ensemble's name; default: the manifest's model (+ _<H>x<W> for several)
    backend: str | None = None  # tensorrt for an engine folder, python for an export
    precision: str = precisions.REFERENCE  # the ONNX graph of the python and onnxruntime stages (any the export has)
    max_batch: int | None = None  # default 8, or the engine profile's MAX
    instances: int = 1
    instance_kind: str | None = None  # "gpu" | "cpu"; default gpu for tensorrt/onnxruntime
    max_queue_delay_us: int = 2000
    preferred_batch: tuple[int, ...] = ()  # default: the engine profile's OPT and MAX for tensorrt
    ort_tensorrt: bool = False  # onnxruntime stage: TensorRT execution accelerator
    top_k: int = 5  # classes per image when a request does not send TOP_K

    def __post_init__(self):
        served = backends.names(served=True)
        if self.backend is not None and self.backend not in served:
            raise UsageError(f"backend '{self.backend}' is not one of {', '.join(served)}")
        graph = precisions.precision(self.precision)  # UsageError naming the known ones
        if self.ort_tensorrt and graph.device == precisions.CPU:
            raise UsageError(f"--ort-tensorrt with --precision {self.precision}: that graph is ONNX Runtime's CPU "
                             "form; for TensorRT serve a Q/DQ or float graph")
        if self.instance_kind not in (None, *INSTANCE_KINDS):
            raise UsageError(f"instance kind '{self.instance_kind}' is not {' or '.join(INSTANCE_KINDS)}")
        if self.instances > MAX_INSTANCES:
            raise UsageError(f"--instances {self.instances} is more than {MAX_INSTANCES} per stage (each instance of "
                             "a Python stage is a process with its own copy of the model): use fewer")
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
    """Add the models for the exports/engines at `paths` to the repository `options.out` (created if needed):
    each model folder is written aside and swapped in whole; earlier models of the same names that `triton`
    wrote are replaced, every other model and file is left as it is. Nothing is written when a name is taken."""
    found, out = sources(paths), Path(options.out)
    if options.name is not None and len(found) > 1:
        raise UsageError(f"--served-model names one model, and these paths hold {len(found)} resolutions: leave it "
                         "out (names then come from the manifests)")
    names = [check_name(options.name, "--served-model") if options.name is not None
             else _default_name(s, len(found) > 1) for s in found]
    folders = [n for name in names for n in (name, *configs.stage_names(name).values())]
    if len(set(folders)) < len(folders):
        raise UsageError(f"two models would both be named {sorted(n for n in folders if folders.count(n) > 1)[0]}:"
                         " serve them in separate repositories or choose other names")
    _check_out(out, found, folders)
    plans = [(source, name, _plan(source, options)) for source, name in zip(found, names)]
    out.mkdir(parents=True, exist_ok=True)
    served = []
    with step(f"writing {len(found)} model(s) into {out}", total=len(found), unit="model") as writing:
        for source, name, plan in plans:
            served.append(_write_models(out, source, name, options, plan))
            writing.advance()
    _write_readme(out)
    return served


def _check_out(out: Path, found: list[Source], folders: list[str]) -> None:
    """UsageError, before anything is written, for an `out` inside a folder it serves, or one of whose names
    is taken by something `triton` did not write."""
    target = out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file, not a folder: choose a folder for the model repository")
    for source in found:
        folder = source.folder.resolve()
        if target == folder or folder in target.parents:
            raise UsageError(f"--out {out} would sit inside {source.folder}, which it serves: write the "
                             "repository elsewhere, e.g. --out model_repository")
    for name in folders:
        path = out / name
        if (path.exists() or path.is_symlink()) and not marks.generated(path):
            raise UsageError(f"'{path}' exists and was not written by `beit-deploy triton`; nothing was changed: "
                             "choose another --served-model, or move it away")


def _write_readme(out: Path) -> None:
    """The repository's README.md, listing every model `triton` wrote there; a README.md of someone else's is
    left as it is."""
    readme = out / "README.md"
    if readme.is_symlink() or (readme.exists() and not readme.read_text(errors="replace").startswith(README_TITLE)):
        say(f"note: {readme} was not written by beit-deploy; it is left as it is")
        return
    served = [ServedModel(m["ensemble"], m["task"], m["backend"], configs.stage_names(m["ensemble"]))
              for p in sorted(out.iterdir()) if (m := marks.read_mark(p)) and m.get("stage") == "ensemble"
              and isinstance(m.get("ensemble"), str) and _NAME.fullmatch(m["ensemble"])]
    with tempfile.NamedTemporaryFile("w", dir=out, prefix=".README.", suffix=".tmp", delete=False) as tmp:
        tmp.write(repository_readme(served, out))
    os.replace(tmp.name, readme)


def _default_name(source: Source, several: bool) -> str:
    """The manifest's model name (+ _<H>x<W> when several), made a Triton name: characters other than letters,
    digits, '_', '.' and '-' become '_' and it starts with a letter or digit, so every name `export` makes works."""
    m = source.manifest
    suffix = f"_{m.resolution[0]}x{m.resolution[1]}" if several else ""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", m.model).lstrip("_.-")[:100 - len(suffix)] or "model"
    return check_name(name + suffix, f"the model name in {source.folder / FILENAME}")


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


@dataclass(frozen=True)
class _Plan:
    """What one source's models will be: the model stage's backend, batching, and the files copied into it
    (source file -> (name in the version folder, sha256 it must have, or None where none is recorded))."""

    backend: backends.Backend
    batching: Batching
    target: str
    files: dict[Path, tuple[str, str | None]]


def _plan(source: Source, options: TritonOptions) -> _Plan:
    """Everything checked before anything is written: names, batch limits, and the files to copy (inside the
    source folder, listed by its manifest, of the recorded size and sha256)."""
    backend, m = _backend(source, options), source.manifest
    for spec in (*m.inputs, *m.outputs):
        if not _TENSOR.fullmatch(spec.name):
            raise ArtifactError(f"{source.folder / FILENAME} names a tensor '{spec.name}', which is not a plain "
                                "name: export the model again")
    batching = _batching(source, backend, options)
    if backend.opens == backends.ENGINE:
        engine = _inside(source.folder, ENGINE_FILE)
        if engine.stat().st_size != source.engine.engine_bytes:
            raise ArtifactError(f"'{engine}' holds {engine.stat().st_size} bytes but {ENGINE_MANIFEST} says "
                                f"{source.engine.engine_bytes}: build the engine again")
        return _Plan(backend, batching, PLAN_FILE, {engine: (PLAN_FILE, None)})
    if options.precision not in m.artifacts:
        raise UsageError(f"{source.folder} has no {options.precision} graph (it has: {', '.join(m.artifacts)}): "
                         f"export with {precisions.precision(options.precision).flag}, or pass --precision "
                         f"{precisions.REFERENCE}")
    check_artifact(source.folder, m, options.precision, hashes=True)
    files = {_inside(source.folder, name): (name, m.sha256.get(name))
             for name in m.files_of(options.precision, source.folder)}
    return _Plan(backend, batching, m.artifacts[options.precision], files)


def _write_models(root: Path, source: Source, name: str, options: TritonOptions, plan: _Plan) -> ServedModel:
    """The four model folders of one source, each written aside and swapped in whole (the model stage, which
    copies and hash-checks the graph, first; the ensemble, which clients call, last)."""
    m, batching, stages = source.manifest, plan.batching, configs.stage_names(name)
    backend = plan.backend
    info = {"ensemble": name, "task": m.task, "backend": backend.name, "beit_deploy": __version__}
    _model_folder(root / stages[MODEL], configs.model_config(stages[MODEL], m, batching, backend.name, plan.target,
                                                             options.precision, options.ort_tensorrt),
                  source, {**info, "stage": MODEL}, python=backend.ours, files=plan.files)
    _model_folder(root / stages[PREPROCESS], configs.preprocess_config(stages[PREPROCESS], m, batching), source,
                  {**info, "stage": PREPROCESS})
    _model_folder(root / stages[POSTPROCESS], configs.postprocess_config(stages[POSTPROCESS], m, batching,
                                                                         options.top_k), source,
                  {**info, "stage": POSTPROCESS})
    _model_folder(root / name, configs.ensemble_config(name, m, batching, options.top_k), source,
                  {**info, "stage": "ensemble"}, python=False, top={configs.LABELS_FILE: configs.labels_text(m)})
    if not backend.ours:  # the bundled server has Triton's Python backend only
        say(f"note: {name}'s {backend.name} model stage needs Triton's {backend.name} backend, which the bundled "
            "CPU server (the serve extra's Triton 2.51) lacks: serve it with the official container (see "
            f"{root / 'README.md'}), or write it with --backend python to serve it here")
    return ServedModel(name, m.task, backend.name, stages)


def _inside(folder: Path, name: str) -> Path:
    """folder/name for a plain file name that exists; ArtifactError for anything else (paths, links out)."""
    path = folder / name
    if Path(name).name != name or name in ("", ".", "..") or not path.is_file() or path.is_symlink():
        raise ArtifactError(f"'{folder}' should hold the file '{name}' that its manifest names, as a plain file: "
                            "export (or build) again")
    return path


def _model_folder(folder: Path, config: dict, source: Source, info: dict, python: bool = True, files=None,
                  top=None) -> None:
    """<model>/config.pbtxt, `top` files beside it, and <model>/1/: model.py + manifest.json for Python models
    and the checked copies of `files`; then beit-deploy's mark. Written aside, swapped in whole. Copies, not
    links: editing the repository never touches the export."""
    with atomic_folder(folder, ours=marks.generated) as tmp:
        version = tmp / "1"
        version.mkdir()
        (tmp / "config.pbtxt").write_text(to_pbtxt(config) + "\n")
        for file_name, text in (top or {}).items():
            if text:
                (tmp / file_name).write_text(text)
        if python:
            (version / "model.py").write_text(MODEL_PY)
            marks.copy_checked(_inside(source.folder, FILENAME), version / FILENAME)
        for path, (target, digest) in (files or {}).items():
            marks.copy_checked(path, version / target, digest)
        marks.write_mark(tmp, info)
