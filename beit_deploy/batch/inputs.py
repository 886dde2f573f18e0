"""What `batch` runs on: INPUT arguments expanded to one list of absolute paths and URIs.

An INPUT is a file, a folder (every file named like an image below it, recursively, in sorted order), a glob
(`photos/**/*.jpg`), a list of paths or URIs (a `.txt` file, one a line, `#` comments; or a `.parquet` file with
a `path` column), or a URI (`s3://bucket/photos/`, `gs://...`, anything pyarrow's filesystems read: a file, a
folder, or a list). Local paths become absolute, since Ray workers do not run in the driver's folder; a relative
entry of a list is relative to the list's folder (for a list behind a URI, a URI beside it). The same input twice
gives one row. An INPUT that names no image (an empty list, a glob matching only folders) is a UsageError.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
from pathlib import Path
from typing import Iterable, Sequence

from ..core.errors import UsageError, describe, require
from ..runtime.preprocess import IMAGE_SUFFIXES

LIST_SUFFIXES = (".txt", ".parquet")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(text: str) -> bool:
    """True for `scheme://...` (s3://, gs://, hdfs://, file://); False for local paths."""
    return bool(_URI.match(text))


def expand(inputs: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
    """Every input, in the order given, folders sorted, duplicates dropped. `exclude`: folders never walked nor
    matched by a glob (the job's own output and masks). UsageError for an INPUT that does not exist or names no
    image (a folder without images, an empty list, a glob matching only folders)."""
    skip = {os.path.abspath(e) for e in exclude}
    found: dict[str, None] = {}
    for item in inputs:
        items = _expand_uri(item) if is_uri(item) else _expand_local(str(item), skip)
        found.update(dict.fromkeys(items))
    return list(found)


def _expand_local(item: str, skip: set[str]) -> list[str]:
    path = Path(item)
    if not path.exists() and not path.is_symlink():
        if glob.has_magic(item):
            matched = [os.path.abspath(m) for m in sorted(glob.glob(item, recursive=True)) if not Path(m).is_dir()]
            matched = [m for m in matched if not any(m.startswith(s + os.sep) for s in skip)]
            if not matched:
                raise UsageError(f"'{item}' matches no file (folders, and the job's own --out and --masks, do not "
                                 "count): check the pattern (quote it so the shell leaves it)")
            return matched
        raise UsageError(f"'{item}' does not exist: check the input path")
    if path.is_dir():
        return [os.path.abspath(p) for p in images_below(path, skip)]
    if path.suffix.lower() in LIST_SUFFIXES:
        return _listed(_read_list(path.read_bytes(), path.suffix.lower(), item), os.path.dirname(os.path.abspath(item)))
    return [os.path.abspath(item)]


def images_below(folder: Path, skip: Iterable[str] = ()) -> list[str]:
    """Paths (under `folder` as given) of everything named like an image in it or below it, sorted; symbolic
    links to folders are not followed (no loops); folders in `skip` (absolute) are not entered. Whatever a name
    is (a FIFO, a folder named x.jpg) it is listed, so the runner reports it as that input's error."""
    skip = set(skip)
    found = []
    for root, dirs, files in os.walk(folder, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if os.path.abspath(os.path.join(root, d)) not in skip)
        found += [os.path.join(root, f) for f in sorted(files) if _is_image_name(f)]
        found += [os.path.join(root, d) for d in dirs if _is_image_name(d)]
    if not found:
        raise UsageError(f"folder '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
    return sorted(found)


def _raise(exc: OSError) -> None:
    raise UsageError(f"cannot list '{exc.filename}' ({exc.strerror}): check its permissions")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _listed(entries: list[str], base: str) -> list[str]:
    """A list's entries as inputs: URIs as they are, others relative to `base` (the list's folder: a local path,
    or a URI for a list behind one)."""
    return [e if is_uri(e) else joined(base, e) if is_uri(base) else os.path.abspath(os.path.join(base, e))
            for e in entries]


def joined(base: str, entry: str) -> str:
    """`entry` (a relative or absolute path) from the folder URI `base`, on the same filesystem and host:
    ('s3://b/lists', 'a.jpg') -> 's3://b/lists/a.jpg'; '../x.jpg' -> 's3://b/x.jpg'; '/x.jpg' -> 's3://b/x.jpg'."""
    root = "/".join(base.split("/", 3)[:3])  # scheme://host
    return root + posixpath.normpath(posixpath.join(base[len(root):] or "/", entry))


def _read_list(data: bytes, suffix: str, name: str) -> list[str]:
    """The entries of a `.txt` list (one a line, blank lines and `#` comments skipped) or a `.parquet` list."""
    if suffix == ".txt":
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"list '{name}' is not UTF-8 text: one path or URI a line") from None
        entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not entries:
            raise UsageError(f"list '{name}' names no image: one path or URI a line (# for comments)")
        return entries
    import io

    pq = require("pyarrow.parquet", "batch", f"reading the Parquet list '{name}'")
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow's own error types
        raise UsageError(f"list '{name}' is not a readable Parquet file ({describe(exc)})") from exc
    column = "path" if "path" in table.column_names else (table.column_names[0] if table.num_columns == 1 else None)
    if column is None:
        raise UsageError(f"list '{name}' has no 'path' column (it has {', '.join(table.column_names)})")
    entries = [str(v) for v in table.column(column).to_pylist() if v]
    if not entries:
        raise UsageError(f"list '{name}' names no image: its '{column}' column is empty")
    return entries


def _expand_uri(uri: str) -> list[str]:
    """A URI: its file, the images below its folder, or the entries of its list."""
    fs, root = filesystem(uri)
    pafs = require("pyarrow.fs", "batch", f"reading '{uri}'")
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise UsageError(f"'{uri}' does not exist: check the URI")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            base = uri.rstrip("/")
            found = sorted(base + i.path[len(root.rstrip("/")):] for i in infos
                           if i.type == pafs.FileType.File and _is_image_name(i.base_name))
            if not found:
                raise UsageError(f"'{uri}' has no images ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
            return found
        suffix = os.path.splitext(root)[1].lower()
        if suffix in LIST_SUFFIXES:
            return _listed(_read_list(read_uri(uri), suffix, uri), uri.rsplit("/", 1)[0])
    except OSError as exc:
        raise UsageError(f"cannot read '{uri}' ({describe(exc)}): check the URI and your credentials") from exc
    return [uri]


def filesystem(uri: str, cache: dict | None = None):
    """(pyarrow filesystem, path inside it) for a URI; `cache` keeps one filesystem per scheme and host (an S3
    client is slow to make), with the part of the URI before the path."""
    key = "/".join(uri.split("/", 3)[:3])
    if cache is not None and key in cache:
        fs, prefix = cache[key]
        return fs, uri[len(prefix):]
    pafs = require("pyarrow.fs", "batch", f"reading '{uri}'")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise UsageError(f"pyarrow cannot read '{uri}' ({describe(exc)}): is its filesystem installed?") from exc
    if cache is not None and uri.endswith(path):
        cache[key] = (fs, uri[:len(uri) - len(path)])
    return fs, path


def read_uri(uri: str, cache: dict | None = None) -> bytes:
    """The bytes of one file behind a URI."""
    fs, path = filesystem(uri, cache)
    with fs.open_input_stream(path) as stream:
        return stream.read()
