"""What every command shares: `friendly`, which turns errors into one line and an exit status; the options
several commands take (`images_option`, `json_option`), declared once; and `TableChoice`, a click.Choice read
from one of the tables (core/precisions.py, core/backends.py) each time it is used.

SIGTERM stops a command like Ctrl-C does (clean-up runs, nothing half-written is left): exit 143, 130 for SIGINT.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Iterable

import click

from ..core.errors import BeitDeployError, EnvironmentProblem, MissingDependencyError, describe, \
    environment_error
from ..core.signals import Terminated, sigterm_raises

# Optional packages -> the extra that installs them, for the one-line hint when a command needs one.
EXTRAS = {"torch": "export", "transformers": "export", "onnx": "export", "onnxscript": "export",
          "onnx_ir": "export", "polygraphy": "export", "tensorrt": "gpu", "modelopt": "quantize",
          "tritonclient": "serve"}


class TableChoice(click.Choice):
    """click.Choice whose choices are read from a table when asked (a row added later is offered too)."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())


def library_choice(module: str, name: str) -> TableChoice:
    """A library tuple (`name` in beit_deploy.`module`) as a click choice, imported only when the option is used
    (so `--help` of another command never loads it)."""
    import importlib

    return TableChoice(lambda: getattr(importlib.import_module(f"beit_deploy.{module}"), name))


def precision_choice(**filters) -> TableChoice:
    """The precisions of the table (core.precisions.names(**filters)) as a click choice; tensorrt=True: those
    `build` builds, its default first."""
    from ..core import precisions

    if filters == {"tensorrt": True}:
        return TableChoice(precisions.buildable)
    return TableChoice(lambda: precisions.names(**filters))


def backend_choice(**filters) -> TableChoice:
    """The backends of the table (core.backends.names(**filters)) as a click choice."""
    from ..core import backends

    return TableChoice(lambda: backends.names(**filters))


def precision_flags(command):
    """One `export` flag per precision written on request (the table's `option` and `about`): --fp16, --int8..."""
    from ..core import precisions

    for p in reversed(precisions.PRECISIONS.values()):
        if p.option:
            command = click.option(p.flag, p.option, is_flag=True, help=f"Also write {p.about}.")(command)
    return command


def images_option(help: str, many: bool = False):  # noqa: A002 - click's own argument name
    """--images: a folder of photos (many=False), or a folder or photo files, repeatable (many=True)."""
    kind = click.Path(exists=True) if many else click.Path(exists=True, file_okay=False)
    return click.option("--images", multiple=many, type=kind, default=None, help=help)


def json_option(help: str, to_file: bool = False):  # noqa: A002 - click's own argument name
    """--json: print JSON instead of text (a flag, `as_json`), or also write it to a file (`json_file`)."""
    if to_file:
        return click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help=help)
    return click.option("--json", "as_json", is_flag=True, help=help)


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
        except Exception as exc:  # a bug: say so in one line, traceback on request
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
