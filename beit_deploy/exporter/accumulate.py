"""Exports that accumulate: a new export into a resolution folder that holds one of the same graph form keeps it.

A resolution folder is one set of graphs of one model: the same weights (their sha256), task, attention form,
bias mode and preprocessing. A new export of that same form adds its artifacts to the folder, refreshes the ones
it makes again, and keeps the others (checked against the earlier manifest's sha256 first, so nothing stale is
carried over), saying which. One of another form (other weights or seed, `--attention`, `--bias-mode`, other
preprocessing) would leave graphs that disagree in one folder: it is refused before any work, naming what
differs, unless `--replace` says to replace the folder whole (or `--out` puts it elsewhere).

The merge runs under the model folder's lock, just before the atomic swap (`files.atomic_folder`'s
`before_swap`), so two exports finishing together each keep what the other wrote.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core import precisions as precision_table
from ..core.errors import ArtifactError, UsageError
from ..core.manifest import FILENAME, Manifest, check_artifact, read_manifest
from ..core.progress import say


@dataclass(frozen=True)
class GraphForm:
    """What every graph of one resolution folder shares. `weights` is a human description, not compared."""

    task: str
    weights_sha256: str | None
    attention: str
    bias_mode: str
    preprocessing: dict
    weights: str = ""

    @classmethod
    def of(cls, m: Manifest) -> "GraphForm":
        return cls(m.task, m.weights.get("sha256"), m.attention, m.bias_mode, m.preprocessing.to_dict(),
                   describe_weights(m.source, m.weights))

    def differences(self, new: "GraphForm") -> list[str]:
        """What an export of form `new` would change in a folder of this form, one phrase each ([]: nothing)."""
        found = []
        if self.weights_sha256 is None:
            found.append("the earlier export records no weights hash (an older beit-deploy), so its weights "
                         "cannot be told from these")
        elif self.weights_sha256 != new.weights_sha256:
            found.append(f"other weights (there: {self.weights}; here: {new.weights})")
        if self.task != new.task:
            found.append(f"another task ({self.task} there, {new.task} here)")
        if self.attention != new.attention:
            found.append(f"--attention {new.attention} (there: {self.attention})")
        if self.bias_mode != new.bias_mode:
            found.append(f"--bias-mode {new.bias_mode} (there: {self.bias_mode})")
        if self.preprocessing != new.preprocessing:
            found.append("other preprocessing settings (preprocessor_config.json)")
        return found


def describe_weights(source: dict, weights: dict) -> str:
    """'random, seed 0, tiny-cls' / 'pretrained, microsoft/beit-base-patch16-224 at rev main'."""
    kind = weights.get("kind", "unknown")
    text = f"{kind}, seed {weights.get('seed')}" if kind == "random" else kind
    rev = f" at {source['revision']}" if source.get("revision") else ""
    return f"{text}, {source.get('model')}{rev}"


def earlier_form(folder: Path) -> tuple[Manifest | None, str]:
    """The manifest of the export already in `folder` (None when there is none or it is unreadable) and a note."""
    if not (Path(folder) / FILENAME).is_file():
        return None, ""
    try:
        return read_manifest(folder), ""
    except ArtifactError as exc:
        return None, f"the earlier manifest is unreadable ({exc}); it is replaced"


def refuse_other_form(folder: Path, new: GraphForm, replace: bool) -> None:
    """UsageError when `folder` holds an export of another form and `replace` is off (nothing said otherwise)."""
    old, _ = earlier_form(folder)
    problems = GraphForm.of(old).differences(new) if old is not None and not replace else []
    if problems:
        raise UsageError(refusal(folder, old, problems))


def check_earlier(folder: Path, new: GraphForm, replace: bool) -> None:
    """Before any work: UsageError when `folder` holds an export of another form and `replace` is off; a line
    saying what will happen to the earlier export otherwise."""
    old, note = earlier_form(folder)
    if note:
        say(f"  note: {folder}: {note}")
    if old is None:
        return
    if replace:
        say(f"  replacing the earlier export in {folder} (--replace): {', '.join(old.artifacts.values())}")
        return
    refuse_other_form(folder, new, replace)
    say(f"  adding to the earlier export in {folder} (it has {', '.join(old.artifacts.values())})")


def refusal(folder: Path, old: Manifest, problems: list[str]) -> str:
    return (f"'{folder}' holds an export whose graphs ({', '.join(old.artifacts.values())}) this one would not "
            f"match: {'; '.join(problems)}. Pass --replace to replace that export whole, or --out another folder "
            "to keep both")


def merge_into(tmp: Path, folder: Path, new: Manifest, replace: bool) -> tuple[Manifest, tuple[str, ...]]:
    """Under the model folder's lock, just before `tmp` replaces `folder`: carry the earlier export's artifacts
    that `new` does not make into `tmp` (hash-checked, hard-linked or copied) and write the merged manifest
    there. -> (the manifest now in tmp, the precisions kept). UsageError when the export in `folder` (written
    meanwhile by another process, perhaps) is of another form and `replace` is off."""
    old, _ = earlier_form(folder)
    if old is None or replace:
        return new, ()
    problems = GraphForm.of(old).differences(GraphForm.of(new))
    if problems:
        raise UsageError(refusal(folder, old, problems))
    kept = tuple(p for p in old.artifacts if p not in new.artifacts and _carry(folder, tmp, old, p))
    merged = merged_manifest(new, old, kept, folder).write_to(tmp)
    for precision in kept:
        say(f"  kept: {old.artifacts[precision]} (from an earlier export)")
    again = [new.artifacts[p] for p in new.artifacts if p in old.artifacts]
    if again:
        say(f"  refreshed: {', '.join(again)}")
    return merged, kept


def _carry(folder: Path, tmp: Path, old: Manifest, precision: str) -> bool:
    """Link (or copy) the files of one earlier artifact into `tmp` once they match the earlier manifest; False,
    with a line saying why, when they do not (that artifact is then not kept)."""
    try:
        check_artifact(folder, old, precision, hashes=True)
    except (ArtifactError, UsageError) as exc:
        say(f"  not kept: {old.artifacts[precision]} ({exc})")
        return False
    names = old.files_of(precision, folder)
    if any((folder / name).is_symlink() for name in names):
        say(f"  not kept: {old.artifacts[precision]} (a symbolic link; an export writes plain files)")
        return False
    if any((tmp / name).exists() for name in names):
        say(f"  not kept: {old.artifacts[precision]} (this export wrote a file of the same name)")
        return False
    for name in names:
        source, target = folder / name, tmp / name
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copyfile(source, target)
    return True


def merged_manifest(new: Manifest, old: Manifest, kept: tuple[str, ...], folder: Path) -> Manifest:
    """`new` with the kept artifacts of `old`: their files, parity, graph statistics, quantization, sha256 and
    the runs that made them (older manifests without runs get one saying so)."""
    order = {p: i for i, p in enumerate(precision_table.PRECISIONS)}
    precisions = sorted([*new.artifacts, *kept], key=lambda p: order.get(p, len(order)))

    def pick(name: str) -> dict:
        mine, theirs = getattr(new, name), getattr(old, name)
        return {p: mine[p] if p in mine else theirs[p] for p in precisions if p in mine or p in theirs}

    files = {f for p in kept for f in old.files_of(p, folder)}
    runs = [dict(run, artifacts=[p for p in run.get("artifacts", ()) if p in kept]) for run in old.runs]
    runs = [run for run in runs if run["artifacts"]]
    if kept and not old.runs:
        runs = [{"artifacts": list(kept), "versions": old.versions,
                 "note": "made by an earlier beit-deploy that recorded no command, date or platform"}]
    return dataclasses.replace(new, artifacts=pick("artifacts"), parity=pick("parity"), graph=pick("graph"),
                               quantization=pick("quantization"),
                               sha256=new.sha256 | {f: old.sha256[f] for f in files if f in old.sha256},
                               runs=runs + list(new.runs))
