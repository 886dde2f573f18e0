"""The output folder of a batch job: one job at a time, what a resume must match, damaged files, and a first
run that failed before its first row."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from photos import photo_tree  # noqa: F401 - the fixture

from beit_deploy.batch import BatchOptions, run_batch
from beit_deploy.batch.output import PartWriter, read_rows
from beit_deploy.batch.rows import error_row, mask_name
from beit_deploy.cli import main
from beit_deploy.core.errors import UsageError


def job(export, inputs, out, progress=None, **kwargs):
    return run_batch(BatchOptions(str(export), tuple(map(str, inputs)), str(out), **kwargs), progress)


def test_a_second_job_on_a_busy_folder_is_refused_and_touches_nothing(tiny_export, photo_tree, tmp_path):
    """While a job runs, another on its folder (new or --resume) is refused at once: it neither deletes the part
    the first is writing nor writes parts of the same numbers."""
    export, out, refused = tiny_export("classification"), tmp_path / "out", []

    def second_job(done, total):
        if refused:
            return
        writing = out / ".part-00009.parquet.0123456789abcdef.tmp"  # as the first job's part being written
        writing.write_bytes(b"half a part")
        for resume in (False, True):
            with pytest.raises(UsageError, match=f"in use by another batch job \\(process {os.getpid()}\\)"):
                job(export, [photo_tree / "city"], out, resume=resume)
            refused.append(resume)
        assert writing.exists()
        writing.unlink()

    summary = job(export, [photo_tree / "city"], out, second_job, batch_size=2, rows_per_file=2)
    assert refused == [False, True]
    rows = read_rows(out, "parquet")
    assert len(rows) == len({r["path"] for r in rows}) == summary.rows
    assert job(export, [photo_tree / "city"], out, resume=True).rows == 0  # the lock went with the job
    assert not (out / ".batch-job").exists()


def test_parts_and_masks_are_never_written_through_a_planted_link(tiny_export, photo_tree, tmp_path):
    """Parts and mask files are written under unpredictable hidden names: a link planted at the name a writer
    might use (here: the old `.<name>.tmp-<pid>`) is never followed."""
    victim, out, masks = tmp_path / "victim.txt", tmp_path / "out", tmp_path / "masks"
    victim.write_text("keep me")
    masks.mkdir()
    photos = sorted(str(p) for p in (photo_tree / "city").rglob("*") if p.is_file())
    for photo in photos:
        (masks / f".{mask_name(photo)}.tmp-{os.getpid()}").symlink_to(victim)

    def plant(done, total):  # the next part's old temporary name, planted while the job runs
        link = out / f".part-{done // 2:05d}.parquet.tmp-{os.getpid()}"
        if not link.is_symlink():
            link.symlink_to(victim)

    job(tiny_export("segmentation"), photos, out, plant, batch_size=2, rows_per_file=2, masks_dir=str(masks))
    assert victim.read_text() == "keep me"
    rows = read_rows(out, "parquet")
    assert len(rows) == len(photos) and all(r["error"] is None for r in rows)
    for row in rows:
        mask = masks / mask_name(row["path"])
        assert not mask.is_symlink() and mask.read_bytes().startswith(b"\x89PNG")


def test_a_first_run_that_failed_to_start_leaves_a_new_folder(tiny_export, photo_tree, tmp_path):
    """A job that stops before its first row (here: no fp16 graph to open) leaves only its spec: the next run
    starts there as in a new folder, with or without --resume, whatever the first one asked."""
    export, out = tiny_export("classification"), tmp_path / "out"
    with pytest.raises(UsageError, match="no fp16 graph"):
        job(export, [photo_tree / "city"], out, precision="fp16")
    assert job(export, [photo_tree / "city"], out).rows == len(read_rows(out, "parquet")) > 0


@pytest.mark.parametrize("damage", ["spec-not-json", "spec-not-an-object", "parquet-truncated", "jsonl-not-rows",
                                    "csv-without-path"])
def test_a_damaged_spec_or_part_is_one_clear_error(tiny_export, photo_tree, tmp_path, damage):
    fmt = {"jsonl-not-rows": "jsonl", "csv-without-path": "csv"}.get(damage, "parquet")
    export, out = tiny_export("classification"), tmp_path / "out"
    job(export, [photo_tree / "city"], out, format=fmt)
    part = out / f"part-00000.{fmt}"
    if damage == "spec-not-json":
        (out / "_batch.json").write_text('{"format_version": 1, "top_k"')
    elif damage == "spec-not-an-object":
        (out / "_batch.json").write_text("[1, 2]")
    elif damage == "parquet-truncated":
        part.write_bytes(part.read_bytes()[:100])
    elif damage == "jsonl-not-rows":
        part.write_text("[1, 2]\n")
    else:
        part.write_text("a,b\n1,2\n")
    failed = CliRunner().invoke(main, ["batch", str(export), str(photo_tree / "city"), "--out", str(out), "--format",
                                       fmt, "--resume"])
    assert failed.exit_code == 2 and failed.stderr.startswith("error: "), failed.stderr
    assert str(out / ("_batch.json" if damage.startswith("spec") else part.name)) in failed.stderr
    assert ("choose a new folder" if damage.startswith("spec") else "delete it") in failed.stderr


def test_resume_refuses_another_precision_or_pixel_limit(tiny_export, photo_tree, tmp_path):
    """The precision a job ran at and its pixel limit shape rows as much as top-k: a resume with another one is
    refused (the precision as soon as the runner says which graph it runs, before any of its rows is written)."""
    export, out = tiny_export("classification", fp16=True), tmp_path / "out"

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job(export, [photo_tree / "city"], out, stop, batch_size=2, rows_per_file=2, precision="fp32")
    before = read_rows(out, "parquet")
    with pytest.raises(UsageError, match="max_pixels"):
        job(export, [photo_tree / "city"], out, resume=True, max_pixels=1000)
    with pytest.raises(UsageError, match="holds rows of the fp32 graph, but this job runs the fp16 one"):
        job(export, [photo_tree / "city"], out, resume=True, precision="fp16")
    assert read_rows(out, "parquet") == before
    job(export, [photo_tree / "city"], out, resume=True, precision="fp32")
    assert json.loads((out / "_batch.json").read_text())["precisions"] == ["fp32"]
    assert {json.loads(pq.read_schema(p).metadata[b"beit_deploy"])["precision"] for p in out.glob("part-*")} \
        == {"fp32"}


def test_each_part_names_the_precisions_of_its_own_rows(tmp_path):
    """Ray workers on different GPUs may run different graphs: each part says which its rows came from, and
    _batch.json all of them."""
    writer = PartWriter(tmp_path, "parquet", "top_k", {"format_version": 1}, 0, 2)
    for precision in ("fp16", "fp16", "fp32", "fp32"):
        writer.add([error_row("top_k", f"/{precision}.jpg", "x")], precision)
    writer.close()
    metas = [json.loads(pq.read_schema(p).metadata[b"beit_deploy"]) for p in writer.files]
    assert [m["precision"] for m in metas] == ["fp16", "fp32"]
    assert json.loads((tmp_path / "_batch.json").read_text())["precisions"] == ["fp16", "fp32"]
