"""Start and stop a Triton Inference Server on a model repository: `beit-deploy serve`, the test fixture, load runs.

The server is the `tritonserver` on PATH (the official install, all backends) or else the one the `serve` extra
installs (nvidia-pytriton's Triton 2.51, Python backend only). For the latter, the Python backend needs its stub
for this Python version beside it: a private backend folder of links is made in a temporary folder per start,
so nothing installed is changed. The Python-backend models run in this Python environment (its `bin` goes first
on PATH), which must have numpy < 2 and beit-deploy itself.

The server runs in its own process group, bound to 127.0.0.1 unless asked otherwise, and dies with the process
that started it (PR_SET_PDEATHSIG on Linux); `stop()` sends SIGTERM, waits, then kills what is left of the group.

Before it starts: the repository's Python models must be the ones `beit-deploy triton` generated (marks.py), every
backend it needs must be installed, and its ports free. Once ready, the server answering must be this one (it
holds the listening socket), and `alive()` watches both the server and each stage's process (a stage killed for
memory would fail every request while the server still says it is ready). The server sees the repository
through a link in its scratch folder (the Python backend's stubs cannot take a path with spaces), its Python
backend's shared-memory regions carry a prefix of ours, and both are removed on every exit path; leftovers of
a start that was killed outright are removed by the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..core.progress import say
from . import marks, watch
from .install import (SERVER_HINT, Installation, ServerError, backend_folder,  # noqa: F401 - SERVER_HINT: API
                      check_python_environment, find_server)




# Errors a CPU-only host always logs (no CUDA driver, NVML or DCGM): not why anything failed.
_CPU_NOISE = re.compile(r"CUDA|Cuda|NVML|DCGM|pinned memory")


@dataclass(frozen=True)
class ServerOptions:
    """Ports (0: a free one), the address to bind, and how long to wait for the models to load."""

    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    startup_timeout: float = 180.0
    stop_timeout: float = 20.0
    log_verbose: int = 0

    def __post_init__(self):
        for what, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise UsageError(f"{what} {port} is not a port number (0 to 65535; 0: a free one)")
        if not isinstance(self.startup_timeout, (int, float)) or not math.isfinite(self.startup_timeout) or \
                self.startup_timeout <= 0:
            raise UsageError(f"--startup-timeout {self.startup_timeout} is not a number of seconds above 0")
        try:
            socket.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError):
            raise UsageError(f"--host '{self.host}' is not an address or a name this machine resolves: use e.g. "
                             "127.0.0.1 (this machine only) or 0.0.0.0 (every address)") from None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports free on `host` right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


class TritonServer:
    """A running server: `with TritonServer(repo) as server: server.http_url ...`. Ports 0 become free ones."""

    def __init__(self, repository: Path, options: ServerOptions = ServerOptions(),
                 installation: Installation | None = None):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir() or not any(self.repository.glob("*/config.pbtxt")):
            raise UsageError(f"'{repository}' is not a model repository (no <model>/config.pbtxt in it): write one "
                             "with `beit-deploy triton EXPORT --out REPOSITORY`")
        self.installation = installation or find_server()
        marks.check_repository(self.repository, self.installation.backends, self.installation.binary)
        ports = [options.http_port, options.grpc_port, options.metrics_port]
        free = iter(free_ports(ports.count(0), options.host))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(free) for p in ports)
        self.options = options
        self.process: subprocess.Popen | None = None
        self.stages: dict[int, str] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._hold: int | None = None
        self._shm = f"{watch.SHM_PREFIX}{os.getpid()}_{os.urandom(4).hex()}_"

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.options.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.options.host)}:{self.grpc_port}"

    @property
    def log_path(self) -> Path | None:
        return Path(self._scratch.name) / "tritonserver.log" if self._scratch else None

    def start(self) -> "TritonServer":
        """Start the server and wait until every model is ready (ServerError with the log's tail if not)."""
        check_python_environment()
        for line in watch.clean_leftovers():
            say(f"removed {line}, left by a Triton start that was killed")
        self._check_ports()
        self._scratch = tempfile.TemporaryDirectory(prefix=watch.SCRATCH_PREFIX)
        try:
            self._hold = watch.hold(Path(self._scratch.name))
            self._launch()
            self._wait_ready()
            self._check_listener()
            self.stages = watch.stages(self.process.pid)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_ports(self) -> None:
        names = {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}
        for what, port in names.items():
            problem = watch.port_problem(self.options.host, port)
            if problem is not None:
                fix = f"stop what holds it, or pass another --{what.lower()}-port (0: a free one)" \
                    if "taken" in problem else "pass another --host"
                raise ServerError(f"cannot serve {what}: {problem}: {fix}")

    def _check_listener(self) -> None:
        """The server that answered must be ours: the one holding the HTTP port's listening socket."""
        holders = watch.listener_pids(self.http_port)
        if holders is not None and self.process.pid not in holders:
            who = f"process {', '.join(map(str, sorted(holders)))}" if holders else "a process of another user"
            raise ServerError(f"another server ({who}) answers on port "
                              f"{self.http_port}, not the tritonserver started here: stop it, or pass another "
                              "--http-port")

    def alive(self) -> str | None:
        """None while the server and each of its stage processes run; else what stopped, in words."""
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process is not None else None
            return f"tritonserver stopped by itself (status {code}): {self.log_summary()}"
        dead = sorted(name for pid, name in self.stages.items() if not watch.alive(pid))
        if dead:
            return (f"the stage {dead[0]} stopped (its process died: killed for memory?), so every request to it "
                    "would fail: start the server again")
        return None

    def _launch(self) -> None:
        link = Path(self._scratch.name) / "repository"  # the stubs cannot take a path with spaces
        link.symlink_to(self.repository, target_is_directory=True)
        command = [str(self.installation.binary), f"--model-repository={link}",
                   f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                   f"--metrics-port={self.metrics_port}", f"--http-address={self.options.host}",
                   f"--grpc-address={self.options.host}", f"--metrics-address={self.options.host}",
                   f"--exit-timeout-secs={int(self.options.stop_timeout)}",
                   f"--backend-config=python,shm-region-prefix-name={self._shm}",
                   f"--log-verbose={self.options.log_verbose}"]
        if self.installation.backends is not None:
            command.append(f"--backend-directory={backend_folder(self.installation, Path(self._scratch.name))}")
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True,
                                            preexec_fn=_parent_death_signal())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with status {self.process.returncode} while loading "
                                  f"{self.repository}: {self.log_summary()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {self.options.startup_timeout:.0f} s: "
                          f"{self.log_summary()}")

    def ready(self) -> bool:
        """True when the server answers that it and every model are ready (HTTP /v2/health/ready)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_summary(self) -> str:
        """Why the server failed, in one line: each model's load error (first line of it), else the log's last
        error lines; and where the whole log was kept (a temporary file that outlives the server)."""
        if not self.log_path or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace")
        failures = dict(re.findall(r"failed to load '([^']+)' version \d+: (.*?)(?:\\n|\"|$)", text, re.M))
        lines = [f"{model}: {why}" for model, why in failures.items()] or \
            [line for line in text.splitlines() if line.startswith("E") and not _CPU_NOISE.search(line)][-3:]
        kept = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        shutil.copyfile(self.log_path, kept)
        return "; ".join(lines or text.splitlines()[-3:]) + f" (whole log: {kept})"

    def stop(self) -> None:
        """SIGTERM (in-flight requests finish), then SIGKILL to whatever of its process group is left."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.options.stop_timeout + 5)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # stubs or a hung server
            process.wait()
        watch.remove_shm(self._shm)
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _parent_death_signal():
    """A function for the child before exec: SIGTERM when the parent thread dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed test run or CLI leaves no server behind; None where there is no prctl.
    Looked up here, in the parent: nothing may be imported between fork and exec."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG



def ensembles(repository: Path) -> list[str]:
    """Names of the ensembles in a model repository (what clients call), sorted."""
    return sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt")
                  if 'platform: "ensemble"' in p.read_text(errors="replace"))


def serve_until_stopped(server: TritonServer, on_ready) -> None:
    """Start `server`, call `on_ready(server)`, and keep it up until Ctrl-C or SIGTERM (then stop it cleanly and
    return) or until it dies by itself (ServerError with its log's tail)."""
    def terminate(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starting us in the background leaves it ignored, and Python then keeps it so
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with server:
            on_ready(server)
            while (problem := server.alive()) is None:
                time.sleep(0.5)
            raise ServerError(problem)
    except KeyboardInterrupt:
        return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
