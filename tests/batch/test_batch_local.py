"""`beit-deploy batch` on the local engine: rows, schema, inputs, formats, masks, resume, and its errors."""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from photos import SAMPLES, check_rows, photo_tree  # noqa: F401 - photo_tree: the fixture
from PIL import Image

from beit_deploy import BeitRunner
from beit_deploy.batch import BatchOptions, run_batch
from beit_deploy.batch.output import read_rows
from beit_deploy.cli import main
from beit_deploy.core.errors import UsageError


def job(export, inputs, out, **kwargs):
    return run_batch(BatchOptions(str(export), tuple(map(str, inputs)), str(out), **kwargs))


def batch_cli(*args):
    result = CliRunner().invoke(main, ["batch", *map(str, args)])
    assert "Traceback" not in result.output + result.stderr
    return result


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_one_row_per_input_and_the_runners_answers(tiny_export, photo_tree, tmp_path, task):
    export = tiny_export(task)
    summary = job(export, [photo_tree], tmp_path / "out", batch_size=3)
    rows = read_rows(tmp_path / "out", "parquet")
    check_rows(rows, photo_tree)
    assert summary.rows == len(rows) and summary.errors == sum(r["error"] is not None for r in rows) == 7
    with BeitRunner(export) as runner:
        for row in (r for r in rows if r["error"] is None):
            alone = runner.predict(row["path"])  # batch of one: the same answer up to float noise
            if "top_ids" in row:
                assert row["top_ids"] == [c.id for c in alone.top_k]
                assert row["top_labels"] == [c.label for c in alone.top_k]
                np.testing.assert_allclose(row["top_scores"], [c.score for c in alone.top_k], atol=1e-6)
            else:
                mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
                assert mask.shape == (row["height"], row["width"]) == alone.label_map.shape
                np.testing.assert_array_equal(mask, alone.label_map)
                assert row["class_ids"] == [c.id for c in alone.classes]


def test_schema_is_fixed_and_names_the_export(tiny_export, photo_tree, tmp_path):
    job(tiny_export("segmentation"), [photo_tree / "odd" / "text.jpg"], tmp_path / "out")  # only an error row
    table = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert table.column_names == ["path", "error", "height", "width", "mask_png", "mask_file", "class_ids",
                                  "fractions"]
    assert table.schema.field("mask_png").type == pa.binary()
    meta = json.loads(table.schema.metadata[b"beit_deploy"])
    assert meta["task"] == "segmentation" and meta["resolution"] == [64, 64] and meta["precision"] == "fp32"
    assert len(meta["manifest_sha256"]) == 64 and meta["model"]
    assert pa.dataset.dataset(tmp_path / "out").to_table().num_rows == 1  # the folder reads as one table


def test_inputs_globs_lists_and_uris(tiny_export, photo_tree, tmp_path, monkeypatch):
    listed = tmp_path / "list.txt"
    listed.write_text(f"# photos\n{SAMPLES[0].name}\n\nmissing.jpg\n{photo_tree.as_uri()}/odd/gray16.png\n")
    shutil.copy(SAMPLES[0], tmp_path / SAMPLES[0].name)
    pq.write_table(pa.table({"path": [str(SAMPLES[1]), str(SAMPLES[1])]}), tmp_path / "list.parquet")
    monkeypatch.chdir(photo_tree)
    job(tiny_export("classification"), ["**/*.png", listed, tmp_path / "list.parquet",
                                        photo_tree.as_uri() + "/city"], tmp_path / "out")
    rows = {r["path"]: r for r in read_rows(tmp_path / "out", "parquet")}
    assert len(rows) == len(set(rows))  # an input twice is one row
    assert str(tmp_path / SAMPLES[0].name) in rows  # a list's relative entry: relative to the list
    assert "does not exist" in rows[str(tmp_path / "missing.jpg")]["error"]  # a listed file: an error row
    assert rows[f"{photo_tree.as_uri()}/odd/gray16.png"]["error"] is None  # read through pyarrow's filesystem
    assert all(Path(p).is_absolute() or "://" in p for p in rows)
    assert any(p.startswith("file://") and "/city/" in p for p in rows)  # a URI folder, walked
    assert not any(p.endswith(".txt") for p in rows)


def test_formats_hold_the_same_rows(tiny_export, photo_tree, tmp_path):
    export = tiny_export("classification")
    for fmt in ("parquet", "jsonl", "csv"):
        job(export, [photo_tree], tmp_path / fmt, format=fmt)
    parquet, jsonl, csv = (read_rows(tmp_path / f, f) for f in ("parquet", "jsonl", "csv"))
    assert parquet == jsonl
    assert [{k: (json.loads(v) if v and v[0] == "[" else v) for k, v in r.items()} for r in csv] == parquet


def test_masks_as_files(tiny_export, photo_tree, tmp_path):
    export = tiny_export("segmentation")
    job(export, [photo_tree / "city"], tmp_path / "table")
    job(export, [photo_tree / "city"], tmp_path / "files", masks_dir=str(tmp_path / "masks"))
    in_table, as_files = read_rows(tmp_path / "table", "parquet"), read_rows(tmp_path / "files", "parquet")
    for kept, written in zip(in_table, as_files):
        assert written["mask_png"] is None and Path(written["mask_file"]).parent == tmp_path / "masks"
        assert Path(written["mask_file"]).read_bytes() == kept["mask_png"]


def test_resume_after_a_stop_gives_every_row_once(tiny_export, photo_tree, tmp_path):
    export, out = tiny_export("classification"), tmp_path / "out"

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(BatchOptions(str(export), (str(photo_tree),), str(out), batch_size=2, rows_per_file=2), stop)
    assert len(read_rows(out, "parquet")) == 4  # finished rows are kept
    with pytest.raises(UsageError, match="--resume"):
        job(export, [photo_tree], out)
    summary = job(export, [photo_tree], out, resume=True, batch_size=2)
    assert summary.skipped == 4
    rows = read_rows(out, "parquet")
    check_rows(rows, photo_tree)
    again = job(export, [photo_tree], out, resume=True)
    assert again.rows == 0 and len(read_rows(out, "parquet")) == len(rows)


def test_retry_errors_replaces_error_rows(tiny_export, photo_tree, tmp_path):
    export, out, photos = tiny_export("classification"), tmp_path / "out", tmp_path / "photos"
    shutil.copytree(photo_tree / "city", photos)
    (photos / "later.jpg").write_bytes(b"not yet")
    job(export, [photos], out)
    shutil.copy(SAMPLES[-1], photos / "later.jpg")  # fixed since
    job(export, [photos], out, resume=True)
    assert [r["error"] is None for r in read_rows(out, "parquet") if r["path"].endswith("later.jpg")] == [False]
    job(export, [photos], out, resume=True, retry_errors=True)
    later = [r for r in read_rows(out, "parquet") if r["path"].endswith("later.jpg")]
    assert len(later) == 1 and later[0]["error"] is None


def test_resume_refuses_another_job(tiny_export, photo_tree, tmp_path):
    job(tiny_export("classification"), [photo_tree / "city"], tmp_path / "out")
    with pytest.raises(UsageError, match="top_k"):
        job(tiny_export("classification"), [photo_tree / "city"], tmp_path / "out", resume=True, top_k=2)
    with pytest.raises(UsageError, match="manifest_sha256"):
        job(tiny_export("segmentation"), [photo_tree / "city"], tmp_path / "out", resume=True)


def test_an_unexpected_decoder_error_costs_one_row(tiny_export, photo_tree, tmp_path, monkeypatch):
    """Anything escaping predict_each (not one of our typed errors) is caught at the row: the batch survives."""
    real = BeitRunner.predict_each

    def crashing(self, images, *args, **kwargs):
        if any(Path(str(i)).name == SAMPLES[0].name for i in images):
            raise ZeroDivisionError("a decoder's surprise")
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(BeitRunner, "predict_each", crashing)
    job(tiny_export("classification"), [photo_tree], tmp_path / "out", batch_size=4)
    rows = read_rows(tmp_path / "out", "parquet")
    bad = [r for r in rows if Path(r["path"]).name == SAMPLES[0].name]
    assert bad[0]["error"] == "ZeroDivisionError: a decoder's surprise"
    assert sum(r["error"] is None for r in rows) == len(SAMPLES) + 1  # every other photo answered


@pytest.mark.parametrize("failure", ["memory", "disk", "session"])
def test_a_failing_machine_ends_the_job_instead_of_error_rows(tiny_export, photo_tree, tmp_path, monkeypatch,
                                                              failure):
    """Out of memory, a full disk or a broken ONNX Runtime session is no input's fault: the job stops with one
    error line and a non-zero exit, instead of writing every input as an error row and exiting 0."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    problem = {"memory": MemoryError(), "disk": OSError(errno.ENOSPC, "No space left on device", str(tmp_path)),
               "session": Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access")}[failure]

    def broken(self, *args, **kwargs):
        raise problem

    monkeypatch.setattr(BeitRunner, "run", broken)
    failed = batch_cli(tiny_export("classification"), photo_tree / "city", "--out", tmp_path / "out", "-q")
    assert failed.exit_code == 1 and failed.stderr.startswith("error: "), failed.stderr
    assert {"memory": "out of memory", "disk": "free some disk space", "session": "ONNX Runtime failed"}[failure] \
        in failed.stderr
    assert read_rows(tmp_path / "out", "parquet") == []


def test_cli_summary_and_errors(tiny_export, photo_tree, tmp_path):
    export = tiny_export("classification")
    done = batch_cli(export, photo_tree, "--out", tmp_path / "out", "-v")
    assert done.exit_code == 0, done.stderr
    assert f"{len(SAMPLES) + 9} rows, 7 errors" in done.stdout and str(tmp_path / "out") in done.stdout
    assert "first row after" in done.stderr
    for args, needle in [((photo_tree, "--out", tmp_path / "out"), "--resume"),
                         ((tmp_path / "nothing", "--out", tmp_path / "o2"), "does not exist"),
                         ((photo_tree, "--out", tmp_path / "o3", "--workers", "2"), "--engine ray"),
                         ((photo_tree, "--out", "s3://bucket/out"), "not URIs")]:
        failed = batch_cli(export, *args)
        assert failed.exit_code == 2 and needle in failed.stderr and failed.stderr.startswith("error: ")


def test_base_install_writes_text_formats_and_names_the_extra(tiny_export, photo_tree, tmp_path):
    """Without pyarrow and ray (hidden), JSON lines work; Parquet and the Ray engine name the batch extra."""
    def cli(*args):
        code = ("import sys\nfor name in ('pyarrow', 'ray'): sys.modules[name] = None\n"
                f"from beit_deploy.cli import main\nmain({[str(a) for a in args]!r})\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    export = tiny_export("classification")
    done = cli("batch", export, photo_tree / "city", "--out", tmp_path / "jsonl", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    for extra in (["--format", "parquet"], ["--engine", "ray", "--format", "jsonl"]):
        failed = cli("batch", export, photo_tree / "city", "--out", tmp_path / extra[1], *extra)
        assert failed.returncode == 1 and "beit-deploy[batch]" in failed.stderr, failed.stderr
