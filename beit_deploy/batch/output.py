"""The output folder of a batch job: numbered part files of rows, and `_batch.json` saying what made them.

    OUT/_batch.json            the export's id, the options that shape rows (format, top-k, masks, pixel limit)
                               and the precisions its rows ran at
    OUT/part-00000.parquet     rows, written whole under a hidden name then renamed: a part is complete or absent
    OUT/part-00001.parquet ...

`pyarrow.dataset.dataset(OUT)`, `pandas.read_parquet(OUT)` and Spark read the folder as one table (names starting
with `_` or `.` are skipped). A job that stops loses at most the rows not yet in a part; `resume` reads the
paths that have a row and runs only the others, so no input ever gets two rows. One job per folder at a time: a
job holds an advisory lock on OUT from start to end, and a second one is refused at once.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path

from ..core.errors import BeitDeployError, UsageError, describe, environment_error, require
from ..core.files import locked, write_atomic
from . import rows as row_table

SPEC = "_batch.json"
JOB = ".batch-job"  # the running job's process id (hidden: readers of OUT skip it)
FORMATS = ("parquet", "jsonl", "csv")
# what must match for rows to belong together; the precision a job runs at is known only once its runner is open
# (per Ray worker), so it is checked as its first rows arrive (PartWriter.add)
SPEC_KEYS = ("manifest_sha256", "format", "top_k", "masks", "max_pixels")
_PART = re.compile(r"^part-(\d{5,})\.(parquet|jsonl|csv)$")


def parts(folder: Path, fmt: str) -> list[Path]:
    """The finished part files of a folder, in order."""
    found = [p for p in folder.iterdir() if (m := _PART.match(p.name)) and m.group(2) == fmt]
    return sorted(found, key=lambda p: int(_PART.match(p.name).group(1)))


@contextlib.contextmanager
def claimed(folder: Path):
    """Make OUT and hold it for one job: a second job on it (two --resume runs would write the same part
    numbers; a new run would delete a running job's part being written) is refused at once, not interleaved.
    The holder's process id is in OUT/.batch-job while it runs, for that refusal to name."""
    folder.mkdir(parents=True, exist_ok=True)
    held = contextlib.ExitStack()
    try:
        held.enter_context(locked(folder, busy="busy"))
    except UsageError:
        holder = _holder(folder)
        raise UsageError(f"'{folder}' is in use by another batch job{f' (process {holder})' if holder else ''}: "
                         "wait for it to end, or choose another folder") from None
    with held:
        write_atomic(folder / JOB, lambda f: f.write(f"{os.getpid()}\n".encode()))
        try:
            yield
        finally:
            (folder / JOB).unlink(missing_ok=True)


def _holder(folder: Path) -> str | None:
    """The process id in OUT/.batch-job (a number, or None)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = (folder / JOB).read_text(encoding="ascii").strip()
        return text if text.isdigit() and len(text) < 12 else None
    return None


def prepare_folder(folder: Path, spec: dict, resume: bool, retry_errors: bool
                   ) -> tuple[dict[str, bool], int, set[str]]:
    """Check OUT, held with `claimed`: ({path: answered?} of rows already there, index of the next part, the
    precisions those rows ran at: PartWriter's `resumed`). Without resume, OUT must be new or empty; with it,
    OUT's spec must match this job's. A folder with a spec but no part is new: an earlier job stopped before its
    first rows (Ray unreachable, an export it could not open). With retry_errors, error rows are dropped from
    their parts first (each part rewritten whole), so those inputs run again and get one row."""
    for pattern in (".part-*.tmp*", f".{SPEC}.*.tmp"):  # written when an earlier job was killed (write_atomic's
        for leftover in folder.glob(pattern):              # .<name>.<random>.tmp)
            leftover.unlink()
    spec_file = folder / SPEC
    old = _read_spec(spec_file) if spec_file.exists() or spec_file.is_symlink() else None
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    if not any(_PART.match(name) for name in names):
        if names - {SPEC}:
            raise UsageError(f"'{folder}' is not empty and holds no batch results ({SPEC}): choose a new folder")
        write_spec(folder, spec, set())
        return {}, 0, set()
    if old is None:
        raise UsageError(f"'{folder}' holds part files but no {SPEC} saying what made them: choose a new folder")
    if not resume:
        raise UsageError(f"'{folder}' already holds batch results: add --resume to go on with them, or choose "
                         "another folder")
    changed = [k for k in SPEC_KEYS if old.get(k) != spec.get(k)]
    if changed:
        raise UsageError(f"'{folder}' holds results of another job ({', '.join(changed)} differ: "
                         f"{', '.join(f'{k}={old.get(k)!r}' for k in changed)}): resume with the same export and "
                         "options, or choose another folder")
    ran = old.get("precisions")
    return (*_answered(folder, spec["format"], retry_errors),
            {str(p) for p in ran} if isinstance(ran, list) else set())


def write_spec(folder: Path, spec: dict, precisions: set[str]) -> None:
    """OUT/_batch.json: the job's spec and the precisions of the rows in OUT."""
    text = json.dumps({**spec, "precisions": sorted(precisions)}, indent=1)
    write_atomic(folder / SPEC, lambda f: f.write(text.encode()))


def _read_spec(spec_file: Path) -> dict:
    """OUT's `_batch.json`; UsageError when it is damaged or not ours (nothing then says what made the rows)."""
    try:
        old = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # a folder, unreadable, not UTF-8 or not JSON
        problem = environment_error(exc, f"reading '{spec_file}'")
        if problem is not None:
            raise problem from exc
        old = None
    if not isinstance(old, dict) or "format_version" not in old:
        raise UsageError(f"'{spec_file}' is damaged or not a beit-deploy batch spec, so nothing says which export "
                         "and options made the rows here: choose a new folder")
    return old


def _answered(folder: Path, fmt: str, retry_errors: bool) -> tuple[dict[str, bool], int]:
    """({path: answered?} of the rows in OUT's parts, index of the next part); with retry_errors, error rows are
    dropped from their parts first."""
    found = parts(folder, fmt)
    done: dict[str, bool] = {}
    for part in found:
        seen = _read_paths(part, fmt)
        if retry_errors and not all(seen.values()):
            _drop_errors(part, fmt)
            seen = {p: ok for p, ok in seen.items() if ok}
        done.update(seen)
    next_index = int(_PART.match(found[-1].name).group(1)) + 1 if found else 0
    return done, next_index


class PartWriter:
    """Rows in, part files out: one part per `rows_per_file` rows (and one for the rest at `close`). Each part's
    metadata names the precisions of its own rows; `_batch.json` those of the whole folder, updated before a
    part with a new one is written. `resumed`: the precisions of the rows OUT already holds; rows of any other
    are refused (a resume with another --precision, or on a machine whose default is another one)."""

    def __init__(self, folder: Path, fmt: str, answer: str, metadata: dict, next_index: int, rows_per_file: int,
                 resumed: set[str] | None = None):
        self.folder, self.fmt, self.answer, self.metadata = folder, fmt, answer, metadata
        self.index, self.rows_per_file = next_index, rows_per_file
        self.resumed, self.precisions = set(resumed or ()), set(resumed or ())
        self.pending: list[tuple[dict, str | None]] = []
        self.files: list[Path] = []

    def add(self, rows: list[dict], precision: str | None = None) -> None:
        if self.resumed and precision and precision not in self.resumed:
            ran = ", ".join(sorted(self.resumed))
            raise UsageError(f"'{self.folder}' holds rows of the {ran} graph, but this job runs the {precision} one "
                             f"(--precision, or this machine's default): resume with --precision "
                             f"{sorted(self.resumed)[0]}, or choose another folder")
        self.pending += [(row, precision) for row in rows]
        while len(self.pending) >= self.rows_per_file:
            self._write(self.pending[:self.rows_per_file])
            self.pending = self.pending[self.rows_per_file:]

    def close(self) -> None:
        """Write the rows not yet in a part (also after an error or Ctrl-C: they are finished rows)."""
        if self.pending:
            self._write(self.pending)
            self.pending = []

    def _write(self, pending: list[tuple[dict, str | None]]) -> None:
        rows, precisions = [row for row, _ in pending], {p for _, p in pending if p}
        if not precisions <= self.precisions:  # the spec first: a part is never of a precision it does not name
            self.precisions |= precisions
            write_spec(self.folder, self.metadata, self.precisions)
        path = self.folder / f"part-{self.index:05d}.{self.fmt}"
        meta = {**self.metadata, "precision": ",".join(sorted(precisions)) or None}
        write_atomic(path, lambda f: WRITERS[self.fmt](self, rows, meta, f))
        self.index += 1
        self.files.append(path)

    def _parquet(self, rows: list[dict], meta: dict, f) -> None:
        pa = require("pyarrow", "batch", "writing Parquet results")
        pq = require("pyarrow.parquet", "batch", "writing Parquet results")
        schema = row_table.schema(self.answer, {"beit_deploy": json.dumps(meta)})
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), f)

    def _jsonl(self, rows: list[dict], meta: dict, f) -> None:
        f.write("".join(json.dumps(_plain(r)) + "\n" for r in rows).encode())

    def _csv(self, rows: list[dict], meta: dict, f) -> None:
        f.write(_csv_text([name for name, _ in row_table.columns(self.answer)],
                          ({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in _plain(r).items()}
                           for r in rows)))


WRITERS = {"parquet": PartWriter._parquet, "jsonl": PartWriter._jsonl, "csv": PartWriter._csv}


def _plain(row: dict) -> dict:
    """A row for text formats: bytes (mask PNGs) as base64."""
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in row.items()}


def read_rows(folder: Path, fmt: str) -> list[dict]:
    """Every row of a folder's parts, in order (text formats: mask PNGs stay base64, CSV lists stay JSON)."""
    out: list[dict] = []
    for part in parts(folder, fmt):
        with _reading(part):
            if fmt == "parquet":
                out += require("pyarrow.parquet", "batch", "reading Parquet results").read_table(part).to_pylist()
            else:
                out += _text_rows(part, fmt)
    return out


def _read_paths(part: Path, fmt: str) -> dict[str, bool]:
    with _reading(part):
        if fmt == "parquet":
            pq = require("pyarrow.parquet", "batch", "resuming Parquet results")
            table = pq.read_table(part, columns=["path", "error"]).to_pydict()
            return {p: e is None for p, e in zip(table["path"], table["error"])}
        return {r["path"]: r["error"] is None for r in _text_rows(part, fmt)}


@contextlib.contextmanager
def _reading(part: Path):
    """A part that cannot be read as rows (truncated, edited, not ours) as one UsageError naming it."""
    try:
        yield
    except BeitDeployError:
        raise
    except Exception as exc:  # pyarrow's, json's, csv's errors; a row without path or error
        problem = environment_error(exc, f"reading '{part}'")
        if problem is not None:
            raise problem from exc
        raise UsageError(f"part '{part}' is damaged ({type(exc).__name__}: {describe(exc)}): delete it (--resume "
                         "then runs its inputs again) or choose a new folder") from exc


def _text_rows(part: Path, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines()]
    with open(part, newline="", encoding="utf-8") as f:
        return [{k: (v or None) for k, v in r.items()} for r in csv.DictReader(f)]


def _drop_errors(part: Path, fmt: str) -> None:
    """Rewrite a part without its error rows (the whole part under a hidden name, then renamed)."""
    with _reading(part):
        _rewrite_without_errors(part, fmt)


def _rewrite_without_errors(part: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "batch", "resuming Parquet results")
        table = pq.read_table(part)
        kept = table.filter(table.column("error").is_null())
        write_atomic(part, lambda f: pq.write_table(kept, f))
    elif fmt == "jsonl":
        lines = [line for line in part.read_text(encoding="utf-8").splitlines() if json.loads(line)["error"] is None]
        write_atomic(part, lambda f: f.write("".join(line + "\n" for line in lines).encode()))
    else:
        with open(part, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            kept, names = [r for r in reader if not r["error"]], reader.fieldnames
        write_atomic(part, lambda f: f.write(_csv_text(names, kept)))


def _csv_text(names, rows) -> bytes:
    """A CSV file's bytes: a header of `names`, then `rows` (dicts)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, names)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")
