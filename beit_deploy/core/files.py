"""Files of an artifact folder: atomic folder writes, an artifact's bytes on disk and its sha256.

`atomic_folder(dest)` is how export and build write a resolution folder: a hidden `.<name>.partial-*` folder
beside the destination, renamed into place only once complete, so a failure leaves nothing behind and never
touches an earlier folder of the same name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` to `folder`, replacing an earlier one only once the new one is complete."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(folder: Path):
    """`with atomic_folder(dest) as tmp:` write into `tmp`; on success it becomes `dest` (replacing an older
    one), on any error it is removed. The parent folder is created, and removed again if it stays empty."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an artifact folder is an ordinary folder
    try:
        yield tmp
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if folder.parent.is_dir() and not any(folder.parent.iterdir()):
            folder.parent.rmdir()


def artifact_files(folder: Path, name: str) -> list[Path]:
    """An artifact's files: `name` itself and its external data (`name.data`), those that exist."""
    return [p for p in (Path(folder) / name, Path(folder) / f"{name}.data") if p.is_file()]


def artifact_bytes(folder: Path, name: str) -> int:
    """Bytes on disk of an artifact with its external data."""
    return sum(p.stat().st_size for p in artifact_files(folder, name))


def artifact_sha256(path: Path) -> str:
    """sha256 of an artifact file followed by its external data file (`<file>.data`), if it has one."""
    digest = hashlib.sha256()
    for file in artifact_files(Path(path).parent, Path(path).name):
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()
