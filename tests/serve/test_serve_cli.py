"""`beit-deploy serve`: prints the endpoint and a client command that answers, stops cleanly on SIGTERM (no
tritonserver or backend stub left behind); a missing server or numpy 2 is one line saying what to install."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from serving import PHOTOS, needs_server

from beit_deploy.cli import main
from beit_deploy.serve import server as server_module
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
    monkeypatch.setattr(server_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(server_module.importlib.util, "find_spec", lambda name: None)
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
def test_a_model_that_cannot_load_fails_with_the_log(tmp_path, tiny_export):
    """A broken repository: the server exits, start() raises with the log's error lines, nothing is left."""
    repo = tmp_path / "repo"
    served, = write_repository([tiny_export("classification")], TritonOptions(out=repo, name="tiny"))
    onnx = repo / served.stages["model"] / "1" / "model.onnx"
    onnx.unlink()  # a copy of the export's, but never write through to it
    onnx.write_bytes(b"truncated")
    before = descendants(os.getpid())
    with pytest.raises(server_module.ServerError, match="ONNX Runtime cannot load") as failure:
        server_module.TritonServer(repo, server_module.ServerOptions(0, 0, 0, startup_timeout=120)).start()
    log = Path(re.search(r"\(whole log: (\S+)\)", str(failure.value)).group(1))
    assert "failed to load" in log.read_text()
    log.unlink()
    time.sleep(0.5)
    assert not [pid for pid in descendants(os.getpid()) - before if alive(pid)]
