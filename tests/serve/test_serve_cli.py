"""`beit-deploy serve`: prints the endpoint and a client command that answers, stops cleanly on SIGTERM (no
tritonserver or backend stub left behind); a missing server or numpy 2 is one line saying what to install."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from serving import PHOTOS, needs_server

from beit_deploy.cli import main
from beit_deploy.core.files import file_sha256
from beit_deploy.serve import server as server_module
from beit_deploy.serve import install, watch
from beit_deploy.serve.repository import TritonOptions, write_repository


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_server
def test_serve_prints_a_working_command_and_stops_on_sigterm(tiny_export, tmp_path):
    repo = tmp_path / "repo"
    write_repository([tiny_export("classification")], TritonOptions(out=repo, name="tiny"))
    process = subprocess.Popen([sys.executable, "-m", "beit_deploy", "serve", str(repo), "--http-port", "0",
                                "--grpc-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        command = None
        deadline = time.monotonic() + 240
        while command is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            command = re.search(r"try: beit-deploy (predict --server \S+ --served-model tiny) samples/images", line)
        assert command, f"no client command printed; stderr: {process.stderr.read() if process.poll() else ''}"
        children = descendants(process.pid)
        assert children, "no server process under `beit-deploy serve`"
        answer = CliRunner().invoke(main, [*command.group(1).split(), str(PHOTOS[0]), "--json"])
        assert answer.exit_code == 0 and '"task": "classification"' in answer.stdout, answer.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "server stopped" in process.stderr.read()
        time.sleep(0.5)
        assert not [pid for pid in children if alive(pid)], "processes left behind after SIGTERM"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_missing_server_is_one_line(tmp_path, tiny_export, monkeypatch):
    repo = tmp_path / "repo"
    write_repository([tiny_export("classification")], TritonOptions(out=repo))
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["serve", str(repo)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "no Triton server found: pip install 'beit-deploy[serve]'" in result.stderr


def test_numpy_2_is_refused(tmp_path, tiny_export, monkeypatch):
    import numpy

    monkeypatch.setattr(numpy, "__version__", "2.4.0")
    with pytest.raises(server_module.ServerError, match="numpy < 2"):
        server_module.check_python_environment()


def test_not_a_repository(tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "not a model repository" in result.stderr


def test_free_ports_are_distinct():
    ports = server_module.free_ports(3)
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)


@needs_server
def test_a_model_that_cannot_load_fails_with_the_log(tmp_path, tiny_export, monkeypatch):
    """A broken repository: the server exits, start() raises with the log's error lines, nothing is left."""
    repo = tmp_path / "repo"
    served, = write_repository([tiny_export("classification")], TritonOptions(out=repo, name="tiny"))
    onnx = repo / served.stages["model"] / "1" / "model.onnx"
    onnx.unlink()  # a copy of the export's, but never write through to it
    onnx.write_bytes(b"truncated")
    mark = json.loads((onnx.parent.parent / "beit-deploy.json").read_text())  # a broken file we wrote, say
    mark["files"]["1/model.onnx"] = file_sha256(onnx)
    (onnx.parent.parent / "beit-deploy.json").write_text(json.dumps(mark))
    before, scratch, hold = descendants(os.getpid()), [], watch.hold
    monkeypatch.setattr(watch, "hold", lambda folder: scratch.append(folder) or hold(folder))
    with pytest.raises(server_module.ServerError, match="ONNX Runtime cannot load") as failure:
        server_module.TritonServer(repo, server_module.ServerOptions(0, 0, 0, startup_timeout=120)).start()
    log = Path(re.search(r"\(whole log: (\S+)\)", str(failure.value)).group(1))
    assert "failed to load" in log.read_text()
    log.unlink()
    time.sleep(0.5)
    assert not [pid for pid in descendants(os.getpid()) - before if alive(pid)]
    assert not list(Path("/dev/shm").glob(f"{watch.SHM_PREFIX}{os.getpid()}_*"))  # its regions are gone too
    assert scratch and not scratch[0].exists()


def one_line(result, code: int, text: str) -> None:
    """One `error:` line (after at most a "starting" line), saying `text`, and exit status `code`."""
    lines = result.stderr.splitlines()
    assert result.exit_code == code and len(lines) <= 2 and lines[-1].startswith("error:"), (result.exit_code, lines)
    assert text in lines[-1] and "Traceback" not in result.stderr, result.stderr


@needs_server
def test_taken_ports_and_nonsense_options_are_refused_before_starting(tiny_export, tmp_path):
    repo = tmp_path / "repo"
    write_repository([tiny_export("classification")], TritonOptions(out=repo))
    with socket.socket() as other:  # another server on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        for flag, what in (("--http-port", "HTTP"), ("--metrics-port", "metrics")):
            ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", flag: port}
            result = CliRunner().invoke(main, ["serve", str(repo), *[x for kv in ports.items() for x in kv]])
            one_line(result, 1, f"cannot serve {what}: port {port} on 127.0.0.1 is taken")
            assert flag in result.stderr
    one_line(CliRunner().invoke(main, ["serve", str(repo), "--host", "not a host"]), 2, "--host 'not a host'")
    for value in ("nan", "inf", "-1"):
        one_line(CliRunner().invoke(main, ["serve", str(repo), "--startup-timeout", value]), 2, "--startup-timeout")
    assert not [p for p in Path(tempfile.gettempdir()).glob(f"{watch.SCRATCH_PREFIX}*") if p.stat().st_uid ==
                os.getuid() and not (p / watch.SCRATCH_MARK).exists()]


@needs_server
def test_python_models_not_generated_here_are_refused(tiny_export, tmp_path):
    """serve runs only the Python models `triton` wrote, by hash: an edited model.py, an extra file in a
    version folder, someone else's Python model (also one whose config spells its backend in single quotes, with
    code in a file not ending in .py, or a hidden folder without a config, which Triton loads too); a config
    Triton would not read; and a stage the bundled server has no backend for."""
    export = tiny_export("classification")
    for case in ("edited", "extra", "foreign", "quoted", "no config", "unparsable", "onnxruntime"):
        repo = tmp_path / case
        served, = write_repository([export], TritonOptions(out=repo, name="m", backend="onnxruntime"
                                                           if case == "onnxruntime" else None))
        version = repo / served.stages["preprocess"] / "1"
        if case == "edited":
            (version / "model.py").write_text("import os; os.system('touch /tmp/owned')\n")
        elif case == "extra":
            (version / "helper.py").write_text("x = 1\n")
        elif case == "foreign":
            (repo / "theirs" / "1").mkdir(parents=True)
            (repo / "theirs" / "config.pbtxt").write_text('backend: "python"\n')
            (repo / "theirs" / "1" / "model.py").write_text("class TritonPythonModel: pass\n")
        elif case == "quoted":
            (repo / "theirs" / "1").mkdir(parents=True)
            (repo / "theirs" / "config.pbtxt").write_text("backend: 'python'\ndefault_model_filename: 'code.txt'\n")
            (repo / "theirs" / "1" / "code.txt").write_text("class TritonPythonModel: pass\n")
        elif case == "no config":
            (repo / ".theirs" / "1").mkdir(parents=True)
            (repo / ".theirs" / "1" / "model.py").write_text("class TritonPythonModel: pass\n")
        elif case == "unparsable":
            (repo / "theirs").mkdir()
            (repo / "theirs" / "config.pbtxt").write_text('backend: "python\n')
        result = CliRunner().invoke(main, ["serve", str(repo), "--http-port", "0", "--grpc-port", "0",
                                           "--metrics-port", "0"])
        expected = {"edited": "is not the file `beit-deploy triton` wrote", "extra": "holds '1/helper.py'",
                    "foreign": "is a Python model that beit-deploy did not write", "onnxruntime": "onnxruntime backend",
                    "quoted": "is a Python model that beit-deploy did not write",
                    "no config": "has no config.pbtxt", "unparsable": "is not a model config Triton would read"}
        one_line(result, 2, expected[case])


def stderr_lines(process, sink: queue.Queue) -> None:
    for line in process.stderr:
        sink.put(line)


@needs_server
def test_a_dead_stage_stops_serve_and_nothing_is_left(tiny_export, tmp_path):
    """A repository under a path with a space and non-ASCII letters is served; when a stage's process dies (an
    OOM kill), serve says which and exits non-zero; its shared-memory regions and scratch folder are gone."""
    repo = tmp_path / "my models \u00e9t\u00e9" / "repo"
    write_repository([tiny_export("classification")], TritonOptions(out=repo, name="tiny"))
    process = subprocess.Popen([sys.executable, "-m", "beit_deploy", "serve", str(repo), "--http-port", "0",
                                "--grpc-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=stderr_lines, args=(process, lines), daemon=True).start()
    try:
        seen, deadline = [], time.monotonic() + 240
        while not any("Ctrl-C" in line for line in seen) and time.monotonic() < deadline and process.poll() is None:
            seen.append(process.stdout.readline())
        assert any("Triton is serving tiny" in line for line in seen), (seen, process.poll())
        regions = list(Path("/dev/shm").glob(f"{watch.SHM_PREFIX}{process.pid}_*"))
        assert regions, "the Python backend's regions carry our prefix"
        server, = [pid for pid in descendants(process.pid) if watch.stages(pid)]
        stage_pid = next(pid for pid, name in watch.stages(server).items() if name == "tiny_postprocess")
        children = descendants(process.pid)
        os.kill(stage_pid, signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        errors = []
        while not lines.empty() or process.stderr and not process.stderr.closed and len(errors) < 1:
            try:
                errors.append(lines.get(timeout=5))
            except queue.Empty:
                break
        text = "".join(errors)
        assert "error: the stage tiny_postprocess stopped" in text, text
        scratch = Path(re.search(r"server log: (\S+)", text).group(1)).parent
        time.sleep(0.5)
        assert not scratch.exists() and not [r for r in regions if r.exists()]
        assert not [pid for pid in children if alive(pid)], "processes left behind"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_triton_json_says_what_was_written(tiny_export, tmp_path):
    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", str(tiny_export("classification")), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["repository"] == str(out)
    (model,) = written["models"]
    assert model["task"] == "classification" and model["backend"] == "python"
    assert all((out / stage).is_dir() for stage in model["stages"].values()) and (out / model["name"]).is_dir()
