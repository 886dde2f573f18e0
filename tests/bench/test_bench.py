"""`beit-deploy bench` on a tiny model: well-formed JSON and markdown, skipped backends with reasons.

No test asserts a timing: the machines running the tests are shared and their timings mean nothing.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main

RESULT_KEYS = {"backend", "batch_size", "seconds_per_iter", "ci_percent", "images_per_second", "peak_memory_mb",
               "speedup", "memory_saved_percent", "iterations", "min_seconds_per_iter"}


@pytest.fixture(scope="module")
def bench_run(tiny_dir, tmp_path_factory):
    """One bench run of the tiny classifier: eager, our graphs and TensorRT (skipped here), 2 iterations."""
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--model", str(tiny_dir("classification")), "--batch-sizes", "2,1", "--iters", "2",
            "--warmup", "0", "--backends", "onnxruntime,onnxruntime-fp16,tensorrt", "--cache",
            str(out / "cache"), "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), result.output


def test_json_is_well_formed(bench_run):
    report, _, _ = bench_run
    assert {"machine", "settings", "results", "end_to_end", "skipped"} <= set(report)
    assert report["machine"]["cpu"] and report["machine"]["physical_cores"] >= 1
    assert report["settings"]["batch_sizes"] == [1, 2] and report["settings"]["resolution"] == [64, 64]
    rows = {(r["backend"], r["batch_size"]): r for r in report["results"]}
    assert set(rows) == {(b, n) for b in ("eager", "onnxruntime", "onnxruntime-fp16") for n in (1, 2)}
    for row in rows.values():
        assert set(row) == RESULT_KEYS
        assert row["seconds_per_iter"] >= row["min_seconds_per_iter"] > 0
        assert row["iterations"] == 2 and row["ci_percent"] is not None
        assert row["images_per_second"] == pytest.approx(row["batch_size"] / row["seconds_per_iter"])
        assert row["peak_memory_mb"] > 10 and row["speedup"] > 0
    assert rows[("eager", 1)]["speedup"] == pytest.approx(1.0)
    assert rows[("eager", 1)]["memory_saved_percent"] == pytest.approx(0.0)


def test_skipped_backends_have_reasons(bench_run):
    report, markdown, _ = bench_run
    skipped = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "GPU" in skipped["tensorrt"]
    assert all(reason for reason in skipped.values())
    for backend in skipped:
        assert f"- {backend}" in markdown


def test_end_to_end_row(bench_run):
    report, markdown, _ = bench_run
    names = {r["backend"] for r in report["end_to_end"]} | {s["backend"] for s in report["skipped"]}
    assert {"transformers", "beit-deploy runner"} <= names  # measured, or skipped with its reason
    transformers = next(r for r in report["end_to_end"] if r["backend"] == "transformers")
    assert transformers["batch_size"] == 5 and transformers["images_per_second"] > 0
    assert "end to end" in markdown


def test_markdown_tables(bench_run):
    _, markdown, stdout = bench_run
    assert "| batch size | eager s/iter | onnxruntime s/iter | speedup | memory eager (MiB) |" in markdown
    assert "#### onnxruntime-fp16" in markdown and "Machine:" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| 1 |")]
    assert len(table) == 2 and all(line.count("|") == 8 for line in table)
    assert markdown.strip() in stdout


def test_bad_arguments_are_usage_errors(tiny_dir):
    model = str(tiny_dir("classification"))
    for extra in (["--backends", "eager,nope"], ["--batch-sizes", "0"], ["--batch-sizes", "a"], ["--iters", "0"]):
        result = CliRunner().invoke(main, ["bench", "--model", model, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "error:" in result.output


def test_ort_session_options():
    from beit_deploy.bench.worker import ort_session_options
    from beit_deploy.bench.report import physical_cores

    options = ort_session_options()
    assert options.intra_op_num_threads == physical_cores() >= 1
    assert ort_session_options(threads=3).intra_op_num_threads == 3


def test_load_and_its_warning(bench_run):
    from beit_deploy.bench.report import BenchReport, Measurement, load_lines

    report, markdown, _ = bench_run
    before, after = report["settings"]["load_average_1min"]
    assert f"1-min load average {before:.1f} before the run, {after:.1f} after" in markdown
    wide = Measurement("eager", 1, 1.0, 0.9, 25.0, 1.0, None, 10)
    busy = BenchReport({"physical_cores": 2}, {"load_average_1min": [9.0, 8.0]}, (wide,), (), ())
    assert "**Warning**" in "\n".join(load_lines(busy)) and "±25%" in "\n".join(load_lines(busy))
    quiet = BenchReport({"physical_cores": 2}, {"load_average_1min": [0.5, 1.0]}, (wide,), (), ())
    assert "Warning" not in "\n".join(load_lines(quiet))


def test_bench_on_an_export_folder_measures_its_graphs(tiny_export, tmp_path):
    folder = tiny_export("classification", fp16=True)
    result = CliRunner().invoke(main, ["bench", str(folder), "--batch-sizes", "1", "--iters", "1", "--warmup", "0",
                                       "--no-end-to-end", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["export"] == str(folder) and report["settings"]["resolution"] == [64, 64]
    assert {r["backend"] for r in report["results"]} == {"eager", "onnxruntime", "onnxruntime-fp16"}
    assert report["settings"]["model"] == read_source(folder)  # eager is the model it was exported from
    asked = CliRunner().invoke(main, ["bench", str(folder), "--backends", "onnxruntime-int8", "--batch-sizes", "1",
                                      "--iters", "1", "--no-end-to-end", "--json", str(tmp_path / "c.json")])
    skipped = json.loads((tmp_path / "c.json").read_text())["skipped"]
    assert asked.exit_code == 0 and "has no int8cpu graph: export it again with --int8-cpu" in skipped[0]["reason"]


def read_source(folder):
    return json.loads((folder / "manifest.json").read_text())["source"]["model"]


def test_bench_refuses_a_truncated_graph_of_an_export_folder(tiny_dir, tmp_path):
    from beit_deploy.exporter.loading import ModelSpec
    from beit_deploy.exporter.pipeline import ExportOptions, export

    folder = export(ModelSpec(str(tiny_dir("classification"))), ExportOptions(out_dir=tmp_path))[0].folder
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(main, ["bench", str(folder), "--batch-sizes", "1", "--iters", "1", "--no-end-to-end"])
    assert result.exit_code == 1 and "truncated" in result.output and "Traceback" not in result.output


def test_bench_takes_an_export_folder_or_a_model(tiny_export, tiny_dir):
    for args in ([], [str(tiny_export("classification")), "--model", str(tiny_dir("classification"))]):
        result = CliRunner().invoke(main, ["bench", *args])
        assert result.exit_code == 2 and "pass one of them" in result.output


def test_a_damaged_cached_export_is_rebuilt(tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    args = ["bench", "--model", str(tiny_dir("classification")), "--backends", "onnxruntime", "--batch-sizes", "1",
            "--iters", "1", "--warmup", "0", "--no-end-to-end", "--cache", str(cache)]
    assert CliRunner().invoke(main, args).exit_code == 0
    (graph,) = cache.glob("*/*/64x64/model.onnx")
    with open(graph, "r+b") as f:  # same size, other bytes: only the hash can tell
        f.seek(200)
        f.write(b"\1\2\3\4")
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "cannot be used" in again.output and "exporting it again" in again.output
    assert "using the cached export" in CliRunner().invoke(main, args).output  # rebuilt, then trusted again


def test_bias_mode_rows_measure_both_storages(tiny_dir, tmp_path):
    """onnxruntime-gathered / -materialised: the fp32 graph with each bias storage forced, in one run."""
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_dir("classification")), "--batch-size", "1", "--iters", "1", "--warmup",
            "0", "--backends", "onnxruntime-gathered,onnxruntime-materialised", "--no-end-to-end", "--cache",
            str(tmp_path / "cache"), "--report", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert {r["backend"] for r in json.loads(out.read_text())["results"]} == {
        "eager", "onnxruntime-gathered", "onnxruntime-materialised"}
    modes = {}
    for manifest in (tmp_path / "cache").rglob("manifest.json"):
        modes[manifest.parent.parent.parent.name] = json.loads(manifest.read_text())["bias_mode"]
    assert modes == {"bias-gathered": "gathered", "bias-materialised": "materialised"}
