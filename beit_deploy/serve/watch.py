"""What `serve` checks about its server from outside, through the operating system (Linux /proc; elsewhere the
checks that need it are skipped): whether a port is free, which process listens on it, the server's stage
processes (Python backend stubs), and the leftovers a killed start leaves (shared-memory regions, scratch
folders), which are ours only by a name we chose and are removed only when no live process holds them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import tempfile
from pathlib import Path

SHM = Path("/dev/shm")
SHM_PREFIX = "beit_deploy_triton_"  # + the pid of the process that started the server + "_"
SCRATCH_PREFIX = "beit-deploy-triton-"
SCRATCH_MARK = ".beit-deploy-scratch"
STUB = "triton_python_backend_stub"


def port_problem(host: str, port: int) -> str | None:
    """Why `port` cannot be listened on at `host` now (taken, or not an address of this machine); None if free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is taken (another server?)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            return f"port {port} on {host} cannot be used ({exc.strerror})"
    return None


def listener_pids(port: int) -> set[int] | None:
    """Processes holding a listening TCP socket on `port` (every address); None where /proc cannot tell."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    holders = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd).strip("socket:[]") in inodes for fd in fd_dir.iterdir()):
                holders.add(int(fd_dir.parent.name))
    return holders


def stages(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the Python-backend stage processes the server `server_pid` started."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != server_pid:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].decode(errors="replace").endswith(STUB):
                found[int(proc.name)] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def remove_shm(prefix: str) -> list[str]:
    """Remove the shared-memory regions whose names start with `prefix`. -> their names."""
    removed = []
    for region in SHM.glob(f"{prefix}*") if SHM.is_dir() else ():
        with contextlib.suppress(OSError):
            region.unlink()
            removed.append(region.name)
    return removed


def clean_leftovers() -> list[str]:
    """Remove what killed starts left: shared-memory regions of ours whose starting process is gone, and
    scratch folders of ours (mark inside, owned by this user) that no live process holds locked."""
    done = []
    for region in SHM.glob(f"{SHM_PREFIX}*") if SHM.is_dir() else ():
        pid = region.name[len(SHM_PREFIX):].split("_", 1)[0]
        with contextlib.suppress(OSError):  # a region removed meanwhile (by its server, or another start)
            if pid.isdigit() and not alive(int(pid)) and region.stat().st_uid == os.getuid():
                done += remove_shm(f"{SHM_PREFIX}{pid}_")
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        with contextlib.suppress(OSError):
            if folder.is_symlink() or not (folder / SCRATCH_MARK).is_file() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running server's
            finally:
                os.close(fd)
            shutil.rmtree(folder, ignore_errors=True)
            done.append(folder.name)
    return done


def hold(folder: Path) -> int:
    """Lock `folder` for as long as this process lives (the descriptor is kept), then mark it as a scratch folder
    of ours: in that order, so that another start's clean_leftovers never sees the mark on an unlocked folder."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (folder / SCRATCH_MARK).touch()
    except BaseException:
        os.close(fd)
        raise
    return fd
