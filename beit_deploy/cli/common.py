"""What every command shares: `friendly`, which turns errors into one line and an exit status.

SIGTERM stops a command like Ctrl-C does (clean-up runs, nothing half-written is left): exit 143, 130 for SIGINT.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from ..core.errors import BeitDeployError, EnvironmentProblem, MissingDependencyError, describe, \
    environment_error
from ..core.signals import Terminated, sigterm_raises

# Optional packages -> the extra that installs them, for the one-line hint when a command needs one.
EXTRAS = {"torch": "export", "transformers": "export", "onnx": "export", "onnxscript": "export",
          "onnx_ir": "export", "polygraphy": "export", "tensorrt": "gpu", "modelopt": "quantize",
          "tritonclient": "serve"}


def friendly(command):
    """Run a command; turn BeitDeployError (and anything unexpected) into one line and an exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_raises():
                return command(*args, **kwargs)
        except (KeyboardInterrupt, Terminated) as stop:
            terminated = isinstance(stop, Terminated)
            click.echo("terminated" if terminated else "interrupted", err=True)
            sys.exit(143 if terminated else 130)
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback on request
            exc = _missing_extra(exc, command.__name__) or _environment(exc, command.__name__) or exc
            if isinstance(exc, BeitDeployError):
                click.echo(f"error: {exc}", err=True)
                sys.exit(exc.exit_code)
            if debugging():
                raise
            click.echo(f"internal error: {type(exc).__name__}: {describe(exc)} "
                       "(set BEIT_DEPLOY_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(70)
    return wrapper


def debugging() -> bool:
    """BEIT_DEPLOY_DEBUG asks for tracebacks: 1, true, yes or on (any case); 0, false, no, off or empty do not."""
    return os.environ.get("BEIT_DEPLOY_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _environment(exc: Exception, command: str) -> EnvironmentProblem | None:
    """A full or read-only disk, a permission, too little memory: the environment's error, said as such."""
    if isinstance(exc, MemoryError):
        return EnvironmentProblem(f"`beit-deploy {command}` ran out of memory: free some memory, or use a smaller "
                                  "resolution, batch size or image")
    return environment_error(exc, f"`beit-deploy {command}`")


def _missing_extra(exc: Exception, command: str) -> MissingDependencyError | None:
    """An optional package a command needs and cannot import, as the error naming the extra that installs it."""
    root = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    return MissingDependencyError(root, EXTRAS[root], f"`beit-deploy {command}`") if root in EXTRAS else None
