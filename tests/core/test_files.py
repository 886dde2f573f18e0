"""core.files: names that stay in their folder, and the atomic folder swap (only our folders, leftovers of killed
runs cleaned up, an export hidden by a killed swap recovered, the earlier folder restored when a swap fails)."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from beit_deploy.core import files
from beit_deploy.core.errors import ArtifactError, UsageError
from beit_deploy.core.files import atomic_folder, bare_name, clean_leftovers, contained, replace_folder, safe_name
from beit_deploy.core.manifest import resolution_folders


def ours(folder, tag="x"):
    """A folder as beit-deploy writes it: a manifest (format_version, artifacts) and a file saying `tag`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format_version": 1, "artifacts": {}, "tag": tag}))
    (folder / "tag").write_text(tag)
    return folder


def leftover(path, kind, tag="x"):
    """A hidden folder as a killed run leaves it: `path` with our mark; for "old", its export inside."""
    folder = ours(path / path.name.split(".")[1], tag) if kind == "old" else ours(path, tag)
    (path / files.MARKS[kind]).touch()
    return folder


def write(folder, tag):
    with atomic_folder(folder) as tmp:
        ours(tmp, tag)


@pytest.mark.parametrize("name", ["../x.onnx", "/etc/passwd", "a/b.onnx", "a\\b.onnx", "..", ".", "", "x\0y", None])
def test_bare_name_refuses_paths(name):
    with pytest.raises(ValueError, match="not a plain file name"):
        bare_name(name)


def test_contained_follows_symlinks(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (tmp_path / "secret").write_text("s")
    (folder / "model.onnx").write_text("m")
    (folder / "alias.onnx").symlink_to("model.onnx")  # inside: fine
    (folder / "out.onnx").symlink_to(tmp_path / "secret")
    assert contained(folder, "model.onnx") == folder / "model.onnx"
    assert contained(folder, "alias.onnx") == folder / "alias.onnx"
    for name in ("out.onnx", "../secret", str(tmp_path / "secret")):
        with pytest.raises(ArtifactError, match="outside its folder|plain file name"):
            contained(folder, name)


@pytest.mark.parametrize("text, expected", [("beit-base-patch16-224", "beit-base-patch16-224"), ("..", "model"),
                                            (".", "model"), ("", "model"), (".hidden", "hidden"),
                                            ('evil"""+__import__("os")', "evil_+__import___os_"),
                                            ("a/b", "a_b")])
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_only_our_folders_or_empty_ones_are_replaced(tmp_path):
    precious = tmp_path / "model" / "64x64"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not written by beit-deploy"):
        write(precious, "new")
    assert (precious / "thesis.tex").read_text() == "years of work"
    (precious / "manifest.json").write_text('{"name": "my-web-app"}')  # a manifest.json, but not ours
    with pytest.raises(UsageError, match="not written by beit-deploy"):
        write(precious, "new")
    link = tmp_path / "model" / "32x32"
    link.symlink_to(precious)
    with pytest.raises(UsageError, match="not written by beit-deploy"):
        write(link, "new")
    assert sorted(p.name for p in precious.parent.iterdir()) == ["32x32", "64x64"]  # no leftovers either
    empty = tmp_path / "model" / "16x16"
    empty.mkdir()
    write(empty, "new")
    write(empty, "newer")  # ours now: replaced
    assert (empty / "tag").read_text() == "newer"


def test_swap_failure_restores_the_earlier_folder(tmp_path, monkeypatch):
    folder = tmp_path / "m" / "64x64"
    write(folder, "old")
    real, calls = os.replace, []

    def failing_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder into place
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_second_rename)
    with pytest.raises(OSError):
        write(folder, "new")
    monkeypatch.setattr(files.os, "replace", real)
    assert (folder / "tag").read_text() == "old"
    assert [p.name for p in folder.parent.iterdir()] == ["64x64"]


def test_leftovers_are_cleaned_and_a_hidden_export_recovered(tmp_path):
    model = tmp_path / "m"
    write(model / "64x64", "a")
    leftover(model / ".64x64.partial-abc12345", "partial", "killed after its manifest was written")
    leftover(model / ".32x32.old-xyz_1234", "old", "hidden by a killed swap")  # 32x32 itself is missing
    leftover(model / ".64x64.old-qqq_1234", "old", "stale: 64x64 is there")
    assert list(resolution_folders(model)) == ["64x64"]  # hidden folders are never resolutions
    busy = leftover(model / ".16x16.partial-live1234", "partial")
    held = files._lock(busy, blocking=True)  # as a running export holds its folder
    try:
        done = clean_leftovers(model)
    finally:
        files._unlock(held)
    assert sorted(p.name for p in model.iterdir()) == [".16x16.partial-live1234", "32x32", "64x64"]
    assert (model / "32x32" / "tag").read_text() == "hidden by a killed swap"
    assert (model / "64x64" / "tag").read_text() == "a"
    assert any("recovered 32x32" in line for line in done)


def test_next_write_cleans_up(tmp_path):
    model = tmp_path / "m"
    leftover(model / ".64x64.partial-abc12345", "partial", "killed")
    leftover(model / ".64x64.old-xyz_1234", "old", "hidden")
    write(model / "96x96", "b")  # another resolution of the same model: cleans and recovers all
    assert sorted(p.name for p in model.iterdir()) == ["64x64", "96x96"]


def _swapper(root, tag, barrier, swaps):
    """Process body: prepare `swaps` finished folders, wait for the other process, swap them all in."""
    folder = root / "m" / "64x64"
    ready = [ours(root / "m" / f".work-{tag}-{k}", tag) for k in range(swaps)]
    barrier.wait()
    errors = []
    for tmp in ready:
        try:
            replace_folder(tmp, folder)
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def test_look_alike_folders_of_the_user_are_left_alone(tmp_path):
    """Only hidden folders with our mark inside are leftovers: a user's `.vim.old-20240101` is not."""
    home = tmp_path / "home"
    for name in (".vim.old-20240101", ".notes.partial-abcdefgh"):
        (home / name / "vim").mkdir(parents=True)
        (home / name / "vim" / "manifest.json").write_text('{"format_version": 1, "artifacts": {}}')
    write(home / "repository", "ours")
    assert sorted(p.name for p in home.iterdir()) == [".notes.partial-abcdefgh", ".vim.old-20240101", "repository"]


def test_callers_say_which_folders_are_theirs(tmp_path):
    repository = tmp_path / "repository"
    (repository / "model").mkdir(parents=True)
    (repository / "model" / "config.pbtxt").write_text("name: 'model'")
    with pytest.raises(UsageError, match="not written by beit-deploy"):
        write(repository, "new")
    with atomic_folder(repository, ours=lambda f: any(f.glob("*/config.pbtxt"))) as tmp:
        (tmp / "README.md").write_text("new")
    assert [p.name for p in repository.iterdir()] == ["README.md"]


def test_concurrent_swaps_of_one_folder(tmp_path):
    """Two exports of the same model and resolution finishing together ("Directory not empty" before): two
    processes swap 200 folders each into one place at once; the swaps take turns, none fails."""
    # spawn, not fork: earlier tests leave threads in this process (Ray's gRPC client after the batch tests), and
    # a forked child can inherit one of their locks held and wait on it forever
    ctx = multiprocessing.get_context("spawn")
    write(tmp_path / "m" / "64x64", "first")
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)
        work = pool.starmap_async(_swapper, [(tmp_path, "a", barrier, 200), (tmp_path, "b", barrier, 200)])
        errors = work.get(timeout=300)  # a hung child fails the test instead of the whole run
    assert errors == [[], []]
    assert (tmp_path / "m" / "64x64" / "tag").read_text() in ("a", "b")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["64x64"]
