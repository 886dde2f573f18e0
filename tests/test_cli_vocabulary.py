"""One CLI vocabulary, through click's CliRunner: `--json` prints JSON on stdout on every command that has it,
`--report FILE` writes it; one name per concept with the old spellings as hidden aliases that still work;
click's usage errors as the tool's one `error:` line (exit 2); `--protocol grpc` on the gRPC port."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.runtime import triton_client
from beit_deploy.exporter.parity import sample_images

PHOTO = sample_images()[0]


def run(*args, **kwargs):
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    assert "Traceback" not in result.output + result.stderr, result.output + result.stderr
    return result


def captured(monkeypatch, module, name):
    """Replace `module.name` (a library call the command makes) with one that records its arguments and stops
    the command there: the test is about how options map to the library, not the library."""
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise SystemExit(0)

    monkeypatch.setattr(module, name, record)
    return calls


# -- one name per concept, old spellings hidden --------------------------------------------------------------
@pytest.mark.parametrize("command, new, old", [
    ("predict", "--served-model", "--model"),
    ("triton", "--served-model", "--name"),
    ("triton", "--max-batch-size", "--max-batch "),
    ("triton", "--preferred-batch-size", "--preferred-batch "),
    ("build", "--batch-profile", "--batch "),
    ("bench", "--batch-size", "--batch-sizes"),
    ("bench", "--precision", "--dtype"),
    ("verify", "--random-inputs", "--random "),
    ("compare", "--random-inputs", "--random "),
])
def test_help_shows_the_new_name_only(command, new, old):
    text = run(command, "--help").output
    assert new in text and old not in text


def test_every_command_has_quiet_and_verbose():
    for name in main.commands:
        text = run(name, "--help").output
        assert "-q, --quiet" in text and "-v, --verbose" in text, name


@pytest.mark.parametrize("spelling", ["--served-model", "--model"])
def test_served_model_and_its_alias(monkeypatch, spelling):
    from beit_deploy.cli import run_commands

    calls = captured(monkeypatch, run_commands, "_predictor")
    result = run("predict", "--server", "localhost", spelling, "beit", PHOTO)
    assert result.exit_code == 0, result.stderr
    assert calls[0][0][1:4] == ("localhost", "beit", "http")


@pytest.mark.parametrize("args", [
    ["--served-model", "m", "--max-batch-size", "4", "--preferred-batch-size", "2"],
    ["--name", "m", "--max-batch", "4", "--preferred-batch", "2"],
])
def test_triton_names_and_aliases(monkeypatch, tmp_path, args):
    from beit_deploy.serve import repository

    calls = captured(monkeypatch, repository, "write_repository")
    result = run("triton", tmp_path, "--out", tmp_path / "repo", *args)
    assert result.exit_code == 0, result.stderr
    options = calls[0][0][1]
    assert (options.name, options.max_batch, options.preferred_batch) == ("m", 4, (2,))


@pytest.mark.parametrize("spelling", ["--batch-profile", "--batch"])
def test_build_batch_profile_and_alias(monkeypatch, tmp_path, spelling):
    from beit_deploy.trt import build

    calls = captured(monkeypatch, build, "build")
    result = run("build", tmp_path, spelling, "2:4:8")
    assert result.exit_code == 0, result.stderr
    assert calls[0][0][1].batch == (2, 4, 8)


class FakeReport:
    """What bench.run.run_bench returns, as far as the command reads it."""

    def to_dict(self):
        return {"rows": [{"backend": "eager", "batch": 1}]}


@pytest.fixture
def fake_bench(monkeypatch):
    from beit_deploy.bench import report, run as bench_run

    calls = []
    monkeypatch.setattr(bench_run, "run_bench", lambda settings: calls.append(settings) or FakeReport())
    monkeypatch.setattr(report, "to_markdown", lambda r: "| backend |\n")
    return calls


@pytest.mark.parametrize("args", [["--batch-size", "1,4", "--precision", "fp16"],
                                  ["--batch-sizes", "1,4", "--dtype", "fp16"]])
def test_bench_names_and_aliases(fake_bench, args):
    result = run("bench", "-m", "beit-base-patch16-224", *args)
    assert result.exit_code == 0, result.stderr
    assert (fake_bench[0].batch_sizes, fake_bench[0].dtype) == ((1, 4), "fp16")
    assert result.stdout.startswith("| backend |")


def test_bench_json_on_stdout_and_report_file(fake_bench, tmp_path):
    result = run("bench", "-m", "beit-base-patch16-224", "--json", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == FakeReport().to_dict() == json.loads((tmp_path / "r.json").read_text())


def test_bench_old_json_file_still_writes_the_file(fake_bench, tmp_path):
    result = run("bench", "-m", "beit-base-patch16-224", "--json", tmp_path / "old.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "old.json").read_text()) == FakeReport().to_dict()
    assert result.stdout.startswith("| backend |")  # the old spelling never changed stdout


def test_verify_json_report_and_old_spelling(tiny_export, tmp_path):
    folder = tiny_export("classification")
    result = run("verify", folder, "--json", "--report", tmp_path / "r.json", "--random-inputs", "1")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["passed"] and printed == json.loads((tmp_path / "r.json").read_text())
    assert printed["random"] == 1
    old = run("verify", folder, "--json", tmp_path / "old.json", "--random", "1")
    assert old.exit_code == 0 and "PASSED" in old.stdout  # the table, as before
    assert json.loads((tmp_path / "old.json").read_text())["random"] == 1


def test_export_json(tiny_dir, tmp_path):
    result = run("export", "--model", tiny_dir("classification"), "-r", "64", "--fp16", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    (written,) = printed["exports"]
    assert written["resolution"] == [64, 64] and written["task"] == "classification"
    assert set(written["graphs"]) == {"fp32", "fp16"} and written["graphs"]["fp16"]["file"] == "model.fp16.onnx"
    assert all(g["parity"]["passed"] for g in written["graphs"].values())
    assert "built" in printed["engines"]
    assert "exporting" in result.stderr  # progress stays on stderr


def test_build_json(monkeypatch, tmp_path):
    from beit_deploy.trt import build

    monkeypatch.setattr(build, "build", lambda folder, options: [tmp_path / "e" / "model.plan"])
    result = run("build", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [str(tmp_path / "e" / "model.plan")]


# -- one error style -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, start", [
    (["predict", "x", "y", "--top-k", "0"], "error: invalid value for '--top-k'"),
    (["predict", "--nope"], "error: no such option '--nope'"),
    (["export"], "error: missing option '--model'"),
    (["verify"], "error: missing argument 'PATH'"),
    (["exprot"], "error: no such command 'exprot'"),
    (["models", "-q", "-v"], "error: -q/--quiet and -v/--verbose contradict"),
])
def test_usage_errors_are_one_error_line(args, start):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(start), result.stderr
    assert "--help`" in result.stderr and "Usage:" not in result.stderr


def test_help_and_version_still_exit_0():
    assert run("--help").exit_code == 0 and run("--version").exit_code == 0 and run("models", "-h").exit_code == 0


# -- --protocol grpc on the gRPC port ------------------------------------------------------------------------
@pytest.mark.parametrize("url, protocol, expected", [
    ("localhost", "http", "localhost:8000"), ("localhost", "grpc", "localhost:8001"),
    ("grpc://host:9001/", "grpc", "host:9001"), ("http://host/", "http", "host:8000"),
    ("[::1]", "grpc", "[::1]:8001"), ("[::1]:7000", "http", "[::1]:7000"),
])
def test_default_port_per_protocol(url, protocol, expected):
    assert triton_client.endpoint(url, protocol) == expected


def test_wrong_port_hint():
    assert "8000 is Triton's HTTP port; gRPC listens on 8001" in triton_client._port_hint("h:8000", "grpc")
    assert "8001 is Triton's gRPC port; HTTP listens on 8000" in triton_client._port_hint("h:8001", "http")
    assert "default ports: HTTP 8000, gRPC 8001" in triton_client._port_hint("h:9", "http")


def test_unreachable_server_names_the_ports():
    pytest.importorskip("tritonclient.http")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("predict", "--server", f"127.0.0.1:{port}", "--served-model", "m", PHOTO)
    assert result.exit_code == 1 and "cannot reach a Triton server" in result.stderr
    assert "default ports: HTTP 8000, gRPC 8001" in result.stderr
