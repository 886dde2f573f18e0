"""beit-deploy's mark on the model folders `beit-deploy triton` writes, and the checks `serve` makes with it.

Every generated model folder holds `beit-deploy.json`: who wrote it, which ensemble and stage it is, and the
sha256 of every file in its version folder. `triton` replaces only folders carrying that mark (a repository's
other models and files are never touched); `serve` runs a repository's Python models only when each is one
that `triton` generated: its version folder holds exactly the files its mark lists, with those hashes, and its
`model.py` is beit-deploy's own. Files are copied in with `copy_checked`, which hashes what it writes, so a file
swapped between the check and the copy cannot slip in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ..core.errors import ArtifactError, UsageError
from ..core.files import MARKS, file_sha256

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


def copy_checked(source: Path, target: Path, expected: str | None = None) -> str:
    """Copy one regular file (never through a symbolic link), hashing the bytes written; ArtifactError when
    `expected` is given and the copy's sha256 differs. -> the copy's sha256."""
    digest = hashlib.sha256()
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ArtifactError(f"'{source}' cannot be read as a plain file ({exc.strerror}): export again") from None
    with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
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
        if Path(folder).is_symlink() or mark.is_symlink() or mark.stat().st_size > _MARK_LIMIT:
            return None
        data = json.loads(mark.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("written_by") == WRITER and isinstance(data.get("files"), dict)
    return data if ok else None


def generated(folder: Path) -> bool:
    """True for a real folder that carries beit-deploy's mark (one `triton` may replace)."""
    return Path(folder).is_dir() and read_mark(folder) is not None


def is_python_model(folder: Path, config_text: str) -> bool:
    """A model the Python backend runs: its config says so, or a version folder holds Python code."""
    return bool(re.search(r'^\s*backend\s*:\s*"python"', config_text, re.M)) or any(
        p.suffix == ".py" for p in Path(folder).glob("*/**/*"))


def check_python_model(folder: Path, model_py: str = MODEL_PY) -> None:
    """UsageError unless the Python model in `folder` is exactly one `triton` generated (see the module doc)."""
    folder, name = Path(folder), Path(folder).name
    redo = "write it again with `beit-deploy triton`, or start tritonserver yourself to run your own Python models"
    mark = read_mark(folder)
    if mark is None:
        raise UsageError(f"'{folder}' is a Python model that beit-deploy did not write (no {MARK}); serve runs only "
                         f"the Python models it generated: {redo}")
    config = (folder / "config.pbtxt").read_text(errors="replace")
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
        if path.is_symlink() or file_sha256(path) != digest:
            raise UsageError(f"'{path}' is not the file `beit-deploy triton` wrote (sha256 differs): {redo}")
    for script in (folder / name for name in found if name.endswith(".py")):
        if script.read_text(errors="replace") != model_py:
            raise UsageError(f"'{script}' is not beit-deploy's generated model.py: {redo}")


def check_repository(repository: Path, backends: Path | None, binary: Path) -> None:
    """UsageError for a repository `serve` will not start: a Python model that `beit-deploy triton` did not
    generate (check_python_model), or a model needing a backend this server lacks (the serve extra's
    Triton has the Python backend only)."""
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        folder, text = config.parent, config.read_text(errors="replace")
        if is_python_model(folder, text):
            check_python_model(folder)
        needed = _backend_of(text)
        if backends is not None and needed and not (backends / needed).is_dir():
            raise UsageError(f"the model '{folder.name}' needs Triton's {needed} backend, which this server "
                             f"({binary}) lacks (the serve extra's Triton has the Python backend "
                             "only): serve it with the official container (the repository's README.md says how), "
                             "or write it with `beit-deploy triton --backend python`")


def _backend_of(config: str) -> str | None:
    """The backend folder a config.pbtxt needs (None: an ensemble, or a platform Triton resolves itself)."""
    backend = re.search(r'^\s*backend\s*:\s*"([^"]+)"', config, re.M)
    platform = re.search(r'^\s*platform\s*:\s*"([^"]+)"', config, re.M)
    if backend:
        return backend.group(1)
    return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
            "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow"}.get(
        platform.group(1) if platform else "")
