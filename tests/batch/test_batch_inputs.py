"""What a batch job runs on: lists behind URIs, inputs that name no image, and globs that must not pick up the
job's own output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from photos import SAMPLES, photo_tree  # noqa: F401 - photo_tree: the fixture

from beit_deploy.batch import BatchOptions, run_batch
from beit_deploy.batch.inputs import expand, joined
from beit_deploy.batch.output import read_rows
from beit_deploy.core.errors import UsageError


def job(export, inputs, out, **kwargs):
    return run_batch(BatchOptions(str(export), tuple(map(str, inputs)), str(out), **kwargs))


def test_a_list_behind_a_uri_names_files_beside_it(tiny_export, tmp_path):
    """A list read through pyarrow's filesystems (file:// here, s3:// alike): its relative entries are URIs
    beside the list, on the same filesystem, not local paths from '/'."""
    lists, other = tmp_path / "lists", tmp_path / "other"
    lists.mkdir()
    other.mkdir()
    shutil.copy(SAMPLES[0], lists / SAMPLES[0].name)
    shutil.copy(SAMPLES[1], other / SAMPLES[1].name)
    (lists / "x.txt").write_text(f"{SAMPLES[0].name}\n../other/{SAMPLES[1].name}\n")
    want = [(lists / SAMPLES[0].name).as_uri(), (other / SAMPLES[1].name).as_uri()]
    assert expand([(lists / "x.txt").as_uri()]) == want
    rows = job(tiny_export("classification"), [(lists / "x.txt").as_uri()], tmp_path / "out")
    assert rows.errors == 0 and [r["path"] for r in read_rows(tmp_path / "out", "parquet")] == want


def test_joined_keeps_the_filesystem_and_host():
    assert joined("s3://b/lists", "a.jpg") == "s3://b/lists/a.jpg"
    assert joined("s3://b/lists/day", "../x/a.jpg") == "s3://b/lists/x/a.jpg"
    assert joined("s3://b", "a.jpg") == joined("s3://b/lists", "/a.jpg") == "s3://b/a.jpg"
    assert joined("gs://b/l", "../../../a.jpg") == "gs://b/a.jpg"  # never above the bucket
    assert joined("file:///data/lists", "a.jpg") == "file:///data/lists/a.jpg"


@pytest.mark.parametrize("kind", ["txt", "parquet", "uri-txt", "glob-of-folders"])
def test_an_input_naming_no_image_is_refused(tiny_export, tmp_path, kind):
    """An empty list or a glob matching only folders would run a job of 0 rows and exit 0: a usage error."""
    empty = tmp_path / "empty.txt"
    empty.write_text("# to fill in\n\n")
    pq.write_table(pa.table({"path": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    (tmp_path / "a.jpg").mkdir()
    item = {"txt": empty, "parquet": tmp_path / "empty.parquet", "uri-txt": empty.as_uri(),
            "glob-of-folders": tmp_path / "**" / "*.jpg"}[kind]
    with pytest.raises(UsageError, match="names no image|matches no file"):
        job(tiny_export("classification"), [SAMPLES[0], item], tmp_path / "out")


def test_a_glob_skips_the_jobs_own_masks_on_resume(tiny_export, photo_tree, tmp_path, monkeypatch):
    """`'**/*.png'` with --masks below the current folder: the masks an earlier run wrote are not inputs."""
    shutil.copytree(photo_tree / "city", tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data")
    export = tiny_export("segmentation")
    first = job(export, ["**/*.png"], "out", masks_dir="masks")
    assert first.rows and len(list(Path("masks").glob("*.png"))) == first.rows
    again = job(export, ["**/*.png"], "out", masks_dir="masks", resume=True)
    assert again.rows == 0 and again.skipped == first.rows
