"""Files of an artifact folder: names that stay inside it, atomic folder writes, leftovers, bytes and sha256.

`atomic_folder(dest)` is how export and build write a resolution folder: a hidden `.<name>.partial-*` folder
beside the destination, renamed into place only once complete, so a failure leaves nothing behind and never
touches an earlier folder of the same name. The swap with an earlier folder renames it aside to a hidden
`.<name>.old-*` folder first; only a folder beit-deploy wrote (it holds our manifest; callers may say otherwise)
or an empty one is ever replaced. A process killed outright (SIGKILL, power loss) can leave either kind of hidden
folder behind: the next write into the same parent folder removes those no running process holds, and puts back
an earlier export that was hidden aside when the new one never arrived. Only folders carrying our mark file are
ever touched that way, never a user's folder that happens to have a similar name. "Held" is an advisory lock
(flock) on the folder, which the kernel drops when its process dies; swaps in one parent folder are serialised by
a lock on that folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from .errors import ArtifactError, UsageError, environment_error
from .progress import say

try:  # advisory locks; without them (not POSIX) nothing is cleaned up, since nothing tells a live write apart
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

MARKER = "manifest.json"  # a folder holding a beit-deploy manifest was written by beit-deploy
_MARKER_LIMIT = 64 * 2**20  # a manifest is kilobytes; a bigger file of that name is not ours
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-[a-z0-9_]{8}$")  # tempfile.mkdtemp's suffix
MARKS = {"partial": ".beit-deploy-partial", "old": ".beit-deploy-old"}  # inside each hidden folder we make
SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")


# --- names ---------------------------------------------------------------------------------------------------
def bare_name(name, what: str = "file name") -> str:
    """`name` when it is a plain file name (no folder part, not '.' or '..', no NUL); ValueError otherwise."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{what} {name!r} is not a plain file name inside its folder")
    return name


def contained(folder: Path, name: str, what: str = "artifact") -> Path:
    """`folder / name`, checked to stay inside `folder`: a plain file name whose real path (symbolic links
    followed) is in the folder. ArtifactError naming the file otherwise."""
    try:
        bare_name(name, what)
    except ValueError as exc:
        raise ArtifactError(f"{folder}: {exc}; artifacts must be files in the export folder: export again") from None
    path = Path(folder) / name
    real, home = path.resolve(), Path(folder).resolve()
    if real != home and home not in real.parents:
        raise ArtifactError(f"'{path}' leads outside its folder (to '{real}'); beit-deploy only reads artifacts "
                            "inside the export folder: export again")
    return path


def safe_name(text: str, fallback: str = "model") -> str:
    """A folder name made from `text` that stays where it is put: characters other than letters, digits and
    `._+-` become '_', no leading dot (not hidden, not '.' or '..'); `fallback` when nothing is left."""
    name = SAFE_CHARS.sub("_", str(text)).lstrip(".")
    return name[:128] or fallback


def written_by_us(folder: Path) -> bool:
    """True when `folder` holds a beit-deploy manifest (a JSON object with format_version and artifacts)."""
    marker = Path(folder) / MARKER
    try:
        if not marker.is_file() or marker.stat().st_size > _MARKER_LIMIT:
            return False
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format_version" in data and "artifacts" in data


def check_replaceable(folder: Path, ours=written_by_us) -> None:
    """UsageError unless `folder` is absent, empty, or a real folder (not a link) that `ours(folder)` says
    beit-deploy wrote (default: it holds a beit-deploy manifest), i.e. one that an export or build may replace."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir() or (any(folder.iterdir()) and not ours(folder)):
        raise UsageError(f"'{folder}' exists and was not written by beit-deploy; it is left as it is: move it away "
                         "or choose another output folder")


def check_output_folder(folder: Path, flag: str = "--out") -> None:
    """EnvironmentProblem (read-only, full, no permission) or UsageError (anything else), before any work, when
    `folder` cannot be created or written: the nearest existing folder on its path must take a new subfolder
    (tried, then removed), so /proc, a read-only mount or a file in the way is said in one line up front, not
    after the model has loaded."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise UsageError(f"cannot write into '{folder}': '{existing}' is not a folder; choose another {flag}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".beit-deploy-probe-", dir=existing))
    except OSError as exc:  # a read-only disk, a permission: said as the environment's; else (/proc) a usage error
        raise environment_error(exc, f"writing into '{folder}'", "nothing was written") or UsageError(
            f"cannot write into '{folder}' ({exc.strerror or exc} in '{existing}'): choose a writable {flag} "
            "folder") from None


# --- locks ---------------------------------------------------------------------------------------------------
def _lock(folder: Path, blocking: bool) -> int | None | bool:
    """A file descriptor holding an exclusive flock on `folder`; False when another process holds it (only
    when not blocking); None when locks are not available here (no fcntl, or a file system without flock)."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return fd
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError:
        os.close(fd)
        return None


def _unlock(fd) -> None:
    if isinstance(fd, int) and not isinstance(fd, bool):
        os.close(fd)  # closing the descriptor drops its flock


@contextlib.contextmanager
def locked(folder: Path, busy: str | None = None):
    """Hold the lock of `folder` (a model folder: one swap or clean-up at a time; a batch job's output folder).
    Yields False when locks are not available here, True otherwise. With `busy`, never wait: UsageError(busy)
    at once when another process (or another descriptor of this one) holds the lock."""
    fd = _lock(folder, blocking=busy is None)
    if fd is False:
        raise UsageError(busy)
    try:
        yield fd is not None
    finally:
        _unlock(fd)


# --- writing a folder atomically ------------------------------------------------------------------------------
def replace_folder(tmp: Path, folder: Path, ours=written_by_us, before_swap=None) -> None:
    """Move the finished `tmp` to `folder`, replacing an earlier one (ours or empty) only once the new one is
    complete. One swap per parent folder at a time; if the second rename fails, the earlier folder is put back.
    `before_swap(tmp, folder)` runs under the same lock just before the swap, so it sees `folder` as the swap
    replaces it, even when other processes swap into the same parent folder (the export merges the earlier
    folder's artifacts into `tmp` there); an exception from it cancels the swap."""
    with locked(folder.parent):
        if before_swap is not None:
            before_swap(Path(tmp), Path(folder))
        _swap(Path(tmp), Path(folder), ours)


def _swap(tmp: Path, folder: Path, ours) -> None:
    if folder.exists() or folder.is_symlink():
        check_replaceable(folder, ours)
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        (old / MARKS["old"]).touch()
        os.replace(folder, old / folder.name)
        try:
            os.replace(tmp, folder)
        except BaseException:
            os.replace(old / folder.name, folder)  # the export is never missing: the earlier one goes back
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    (folder / MARKS["partial"]).unlink(missing_ok=True)  # in place: no longer a leftover


@contextlib.contextmanager
def atomic_folder(folder: Path, ours=written_by_us, before_swap=None):
    """`with atomic_folder(dest) as tmp:` write into `tmp`; on success it becomes `dest` (replacing an older
    one that `ours(older)` says beit-deploy wrote, by default one holding its manifest, or an empty one), on any
    error it is removed. Refuses up front to replace any other folder. Cleans up leftovers of killed runs beside
    `dest` first. The parent folder is created, and removed again if this call created it and it stays empty.
    `before_swap`: see `replace_folder`."""
    folder = Path(folder)
    created = not folder.parent.exists()
    folder.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(folder, ours)
    with locked(folder.parent) as can_lock:
        if can_lock:
            clean_leftovers(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
        hold = _lock(tmp, blocking=True)  # tells a later clean-up that this folder is in use
        (tmp / MARKS["partial"]).touch()  # and that it is ours to clean up if its process dies
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact folder is an ordinary folder
        yield tmp
        replace_folder(tmp, folder, ours, before_swap)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _unlock(hold)
        with contextlib.suppress(OSError):
            if created and not any(folder.parent.iterdir()):
                folder.parent.rmdir()


def clean_leftovers(parent: Path) -> list[str]:
    """Remove the hidden `.<name>.partial-*` / `.<name>.old-*` folders of killed runs in `parent` (those with
    our mark inside) that no running process holds; an `.old-*` one whose export never got replaced is put back
    first. Call with `locked(parent)` held. -> what was done, one line each (also said on stderr)."""
    done = []
    for entry in sorted(Path(parent).iterdir()):
        match = LEFTOVER.match(entry.name)
        if not match or entry.is_symlink() or not (entry / MARKS[match["kind"]]).is_file():
            continue
        if match["kind"] == "partial":
            fd = _lock(entry, blocking=False)
            if fd is None or fd is False:  # held by a running export, or no way to tell: leave it
                continue
            shutil.rmtree(entry, ignore_errors=True)
            _unlock(fd)
            done.append(f"removed {entry.name}, left by an interrupted run")
        else:
            done += _recover_old(entry, Path(parent) / match["name"])
    for line in done:
        say(f"  {parent}: {line}")
    return done


def _recover_old(old: Path, target: Path) -> list[str]:
    """An `.old-*` folder outlives its swap only when the swap was killed: put its export back if the new one
    never arrived, then remove it."""
    inner, done = old / target.name, []
    if not target.exists() and not target.is_symlink() and inner.is_dir() and written_by_us(inner):
        os.replace(inner, target)
        done.append(f"recovered {target.name} from {old.name}, hidden by an interrupted swap")
    shutil.rmtree(old, ignore_errors=True)
    return done + [f"removed {old.name}, left by an interrupted swap"]


# --- single files in shared folders ---------------------------------------------------------------------------
def open_exclusive(path: Path, mode: int = 0o644) -> int:
    """A new file at `path`, opened for writing only if nothing (not even a dangling symbolic link) is there:
    O_CREAT | O_EXCL | O_NOFOLLOW, so a name planted in a shared folder is never written through."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)


def open_lock_file(path: Path) -> int:
    """A lock file's descriptor (created if missing), never through a symbolic link: ArtifactError if `path` is
    one (someone planted it in the shared folder)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if Path(path).is_symlink():
            raise ArtifactError(f"'{path}' is a symbolic link (to '{os.readlink(path)}'): beit-deploy never writes "
                                "through links in a shared folder; remove it") from exc
        raise


def write_atomic(path: Path, write, mode: int = 0o644) -> Path:
    """Write a file by `write(binary file object)` to an unpredictable hidden name beside `path`, opened
    exclusively (never through a link), then rename it over `path`: readers see the old file or the new one,
    never half of one, and a link planted at `path` is replaced, never followed."""
    path = Path(path)
    for _ in range(16):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = open_exclusive(tmp, mode)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 16 collisions of 64 random bits
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- bytes and hashes -----------------------------------------------------------------------------------------
def artifact_files(folder: Path, name: str) -> list[Path]:
    """An artifact's files: `name` itself and its external data (`name.data`), those that exist."""
    return [p for p in (Path(folder) / name, Path(folder) / f"{name}.data") if p.is_file()]


def artifact_bytes(folder: Path, name: str) -> int:
    """Bytes on disk of an artifact with its external data."""
    return sum(p.stat().st_size for p in artifact_files(folder, name))


def file_sha256(path: Path) -> str:
    """sha256 of one file."""
    return _sha256([Path(path)])


def artifact_sha256(path: Path) -> str:
    """sha256 of an artifact file followed by its external data file (`<file>.data`), if it has one."""
    return _sha256(artifact_files(Path(path).parent, Path(path).name))


def stream_sha256(files) -> str:
    """sha256 of open binary files' bytes one after the other, read into one reused 1 MiB buffer: reading in fresh
    large blocks instead raises glibc's mmap threshold, and ONNX Runtime, loading the graph next, then peaked
    230 MB higher (measured on beit-base@224)."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    for f in files:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _sha256(paths: list[Path]) -> str:
    """sha256 of the files' bytes one after the other (stream_sha256)."""
    with contextlib.ExitStack() as files:
        return stream_sha256(files.enter_context(path.open("rb")) for path in paths)
