"""beit-deploy's mark on the model folders `beit-deploy triton` writes, and the checks `serve` makes with it.

Every generated model folder holds `beit-deploy.json`: who wrote it, which ensemble and stage it is, and the
sha256 of every file in its version folder. `triton` replaces only folders carrying that mark (a repository's
other models and files are never touched); `serve` runs a repository's Python models only when each is one
that `triton` generated: its version folder holds exactly the files its mark lists, with those hashes, and its
`model.py` is beit-deploy's own. Files are copied in with `copy_checked`, which hashes what it writes, so a file
swapped between the check and the copy cannot slip in.

A repository is untrusted input: its configs are parsed as Triton parses them (protobuf text format, Triton's own
ModelConfig message), and every model that does not name a known backend other than Python is held to the Python
check; every file read or hashed is opened as a plain file (no symbolic link, no FIFO, no device), its size capped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from ..core.errors import ArtifactError, BeitDeployError, UsageError, describe, require
from ..core.files import MARKS, file_sha256, stream_sha256

MODEL_PY = '''"""A Triton Python-backend model written by `beit-deploy triton`; the same file serves every stage.

Which stage it is (preprocess, model or postprocess) comes from config.pbtxt's `beit_deploy.stage` parameter,
and every setting from the manifest.json beside this file. The code is beit-deploy's own, imported from the
Python environment the server runs in: `pip install beit-deploy` there (numpy < 2 for Triton 2.51's stub).
"""

from beit_deploy.serve.stages import TritonPythonModel  # noqa: F401
'''
MARK = "beit-deploy.json"
WRITER = "beit-deploy triton"
_MARK_LIMIT = 1 << 20
_UNLISTED = {"config.pbtxt", MARK, *MARKS.values()}  # MARKS: core.files' own, while a folder is written
_ENV_PATH = re.compile(r"EXECUTION_ENV_PATH", re.I)
_CONFIG_LIMIT = 1 << 20
# Triton's backends that run no Python code of a repository's, and the platforms that name one (an ensemble: None).
_NOT_PYTHON = frozenset({"onnxruntime", "tensorrt", "pytorch", "tensorflow", "openvino"})
_PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
              "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow", "ensemble": None}
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
          stat.S_IFSOCK: "a socket"}


def open_plain(path: Path, fix: str, error: type[BeitDeployError] = ArtifactError) -> int:
    """A read-only descriptor of the regular file at `path`: opened without following a symbolic link and without
    blocking (a FIFO would wait for a writer forever), then checked to be a regular file; `error` saying what it
    is instead, then `fix`, otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        why = "a symbolic link" if os.path.islink(path) else exc.strerror
        raise error(f"'{path}' cannot be read as a plain file ({why}): {fix}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"'{path}' is not a plain file (it is {_KINDS.get(stat.S_IFMT(mode), 'a special file')}): {fix}")
    return fd


def read_plain(path: Path, limit: int, fix: str, error: type[BeitDeployError] = ArtifactError) -> bytes:
    """The bytes of the regular file at `path` (open_plain); `error` when it holds more than `limit` bytes."""
    with os.fdopen(open_plain(path, fix, error), "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise error(f"'{path}' is larger than {limit} bytes, too large for what it should be: {fix}")
    return data


def _sha256_plain(path: Path, fix: str, error: type[BeitDeployError]) -> str:
    with os.fdopen(open_plain(path, fix, error), "rb") as file:
        return stream_sha256([file])


def copy_checked(source: Path, target: Path, expected: str | None = None) -> str:
    """Copy one regular file (never through a symbolic link), hashing the bytes written; ArtifactError when
    `expected` is given and the copy's sha256 differs. -> the copy's sha256."""
    digest = hashlib.sha256()
    with os.fdopen(open_plain(source, "export again"), "rb") as src, open(target, "xb") as dst:
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
    if expected is not None and digest.hexdigest() != expected:
        raise ArtifactError(f"'{source}' is not the file its export wrote (its sha256 differs from the one in its "
                            "manifest): export the model again")
    return digest.hexdigest()


def write_mark(folder: Path, info: dict) -> None:
    """The mark of a finished model folder: `info` (ensemble, stage, task, backend) and the sha256 of every file
    in it except config.pbtxt (which users may tune) and the mark itself."""
    files = {name: file_sha256(folder / name) for name in sorted(_entries(folder))}
    (folder / MARK).write_text(json.dumps({"written_by": WRITER, **info, "files": files}, indent=1) + "\n")


def _entries(folder: Path) -> set[str]:
    """Relative paths of everything in a model folder but folders, its config.pbtxt and its mark."""
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
            if (p.is_symlink() or not p.is_dir()) and p.relative_to(folder).as_posix() not in _UNLISTED}


def read_mark(folder: Path) -> dict | None:
    """The mark of a model folder `triton` wrote; None for any other folder (or a link, or an unreadable mark)."""
    mark = Path(folder) / MARK
    try:
        if Path(folder).is_symlink():
            return None
        data = json.loads(read_plain(mark, _MARK_LIMIT, ""))
    except (BeitDeployError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("written_by") == WRITER and isinstance(data.get("files"), dict)
    return data if ok else None


def generated(folder: Path) -> bool:
    """True for a real folder that carries beit-deploy's mark (one `triton` may replace)."""
    return Path(folder).is_dir() and read_mark(folder) is not None


def read_config(folder: Path):
    """Triton's ModelConfig message of `folder`'s config.pbtxt, parsed as Triton parses it (protobuf text format);
    UsageError for one that is not a plain file or not a config Triton would read."""
    path = Path(folder) / "config.pbtxt"
    fix = "fix or remove that model (`beit-deploy triton` writes configs that parse)"
    text = read_plain(path, _CONFIG_LIMIT, fix, UsageError).decode(errors="replace")
    purpose = "checking a Triton model repository"
    model_config = require("tritonclient.grpc.model_config_pb2", "serve", purpose)
    text_format = require("google.protobuf.text_format", "serve", purpose)
    try:
        return text_format.Parse(text, model_config.ModelConfig())
    except text_format.ParseError as exc:
        raise UsageError(f"'{path}' is not a model config Triton would read ({describe(exc)}): {fix}") from None


def is_python_model(folder: Path, config) -> bool:
    """A model that may run Python code from the repository: its config (a ModelConfig) names no known backend
    other than Python (Triton guesses the backend of a config naming none: a model.py makes it Python), or a
    runtime of its own, or a version folder holds Python code."""
    backend = _backend_of(config)
    return (backend is not None and backend not in _NOT_PYTHON) or bool(config.runtime) or any(
        p.suffix == ".py" for p in Path(folder).glob("*/**/*"))


def check_python_model(folder: Path, model_py: str = MODEL_PY) -> None:
    """UsageError unless the Python model in `folder` is exactly one `triton` generated (see the module doc)."""
    folder, name = Path(folder), Path(folder).name
    redo = "write it again with `beit-deploy triton`, or start tritonserver yourself to run your own Python models"
    mark = read_mark(folder)
    if mark is None:
        raise UsageError(f"'{folder}' is a Python model that beit-deploy did not write (no {MARK}); serve runs only "
                         f"the Python models it generated: {redo}")
    config = read_plain(folder / "config.pbtxt", _CONFIG_LIMIT, redo, UsageError).decode(errors="replace")
    if _ENV_PATH.search(config):
        raise UsageError(f"'{folder / 'config.pbtxt'}' sets EXECUTION_ENV_PATH (another Python environment): {redo}")
    found = _entries(folder)
    listed = mark["files"]
    extra, missing = sorted(found - set(listed)), sorted(set(listed) - found)
    if extra or missing:
        what = f"holds '{extra[0]}', which" if extra else f"lacks '{missing[0]}', which"
        raise UsageError(f"the Python model '{name}' {what} its {MARK} does not list that way: {redo}")
    for relative, digest in listed.items():
        path = folder / relative
        if _sha256_plain(path, redo, UsageError) != digest:
            raise UsageError(f"'{path}' is not the file `beit-deploy triton` wrote (sha256 differs): {redo}")
    ours = hashlib.sha256(model_py.encode()).hexdigest()
    for script in (folder / name for name in found if name.endswith(".py")):
        if _sha256_plain(script, redo, UsageError) != ours:
            raise UsageError(f"'{script}' is not beit-deploy's generated model.py: {redo}")


def check_repository(repository: Path, backends: Path | None, binary: Path) -> None:
    """UsageError for a repository `serve` will not start: a folder without config.pbtxt (Triton loads every
    folder, hidden ones too, guessing the backend of one without a config: a model.py in it runs), a config
    Triton would not read (read_config), a model that may run Python code and is not one `beit-deploy triton`
    generated (is_python_model, check_python_model), or a model needing a backend this server lacks (the serve
    extra's Triton has the Python backend only)."""
    for folder in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        if not os.path.lexists(folder / "config.pbtxt"):
            raise UsageError(f"'{folder}' has no config.pbtxt, and Triton would load it anyway, guessing its backend "
                             "(a model.py there would run): give it a config, or move it out of the repository (a "
                             "leftover of an interrupted `beit-deploy triton` goes when that runs again)")
        config = read_config(folder)
        if is_python_model(folder, config):
            check_python_model(folder)
        needed = _backend_of(config)
        if backends is not None and needed and not (backends / needed).is_dir():
            raise UsageError(f"the model '{folder.name}' needs Triton's {needed} backend, which this server "
                             f"({binary}) lacks (the serve extra's Triton has the Python backend "
                             "only): serve it with the official container (the repository's README.md says how), "
                             "or write it with `beit-deploy triton --backend python`")


def _backend_of(config) -> str | None:
    """The backend folder a ModelConfig needs: its backend, else its platform's; None for an ensemble (which has
    none), "" where Triton would have to guess (no backend, and no platform known here)."""
    return config.backend or _PLATFORMS.get(config.platform, "")
