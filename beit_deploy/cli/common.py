"""What every command shares: `friendly`, which turns errors into one line and an exit status and gives every
command -q/--quiet and -v/--verbose (`verbosity_options`); the options several commands take (`images_option`,
`json_option`), declared once; `option`, a click option whose old spellings still work but are left out of
--help; `Group`, which says click's own usage errors in the tool's `error:` style; and `TableChoice`, a
click.Choice read from one of the tables (core/precisions.py, core/backends.py) each time it is used.

The vocabulary, one word per concept on every command: `--json` prints machine-readable JSON on stdout instead of
text; `--report FILE` writes it to a file as well; `--model` is the checkpoint (short name, hub id or folder),
`--served-model` a model on a Triton server; `--batch-size` is images per call (a list of them in `bench`),
`--batch-profile` a TensorRT profile MIN:OPT:MAX, `--max-batch-size`/`--preferred-batch-size` Triton's batcher;
`--precision` a graph's precision; `--random-inputs` the count of random inputs beside the photos.

SIGTERM stops a command like Ctrl-C does (clean-up runs, nothing half-written is left): exit 143, 130 for SIGINT.
"""

from __future__ import annotations

import errno
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


class Option(click.Option):
    """A click option whose `aliases` (old spellings) are accepted but left out of --help and error hints."""

    def __init__(self, param_decls, aliases: tuple[str, ...] = (), **attrs):
        super().__init__([*param_decls, *aliases], **attrs)
        self.aliases = tuple(aliases)

    def get_help_record(self, ctx):
        return self._without_aliases(super().get_help_record, ctx)

    def get_error_hint(self, ctx):
        return self._without_aliases(super().get_error_hint, ctx)

    def _without_aliases(self, method, ctx):
        opts, secondary = self.opts, self.secondary_opts
        self.opts = [o for o in opts if o not in self.aliases]
        self.secondary_opts = [o for o in secondary if o not in self.aliases]
        try:
            return method(ctx)
        finally:
            self.opts, self.secondary_opts = opts, secondary


def option(*param_decls: str, aliases: tuple[str, ...] = (), **attrs):
    """click.option with hidden old spellings: option("--served-model", "served_model", aliases=("--model",))."""
    return click.option(*param_decls, cls=Option, aliases=aliases, **attrs)


STDOUT = "-"


def json_option(help: str, report: bool = False):  # noqa: A002 - click's own argument name
    """--json: print JSON on stdout instead of text (`as_json`). report=True adds --report FILE (`report_file`),
    the same JSON written to a file; there the old spelling `--json FILE` still works and means --report FILE."""
    if not report:
        return click.option("--json", "as_json", is_flag=True, help=help)

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, json_arg=None, report_file=None, **kwargs):
            if json_arg not in (None, STDOUT):  # `--json FILE`, the spelling before --report
                report_file = report_file or json_arg
            return command(*args, as_json=json_arg == STDOUT, report_file=report_file, **kwargs)

        wrapper = click.option("--report", "report_file", type=click.Path(dir_okay=False), default=None,
                               help="Also write the JSON report to this file.")(wrapper)
        return click.option("--json", "json_arg", is_flag=False, flag_value=STDOUT, default=None, metavar="",
                            help=help)(wrapper)
    return decorate


def write_report(path: str, text: str) -> None:
    """A --report or --markdown file, written whole or not at all (a reader never sees half a report)."""
    from pathlib import Path

    from ..core.files import write_atomic

    write_atomic(Path(path), lambda f: f.write(text.encode()))


def verbosity_options(command, for_group: bool = False):
    """-q/--quiet (no progress, only results, warnings and errors) and -v/--verbose (third-party libraries' own
    logs too) on a command: given, they set core.progress's verbosity for the command's run, then restore it.
    for_group=True: on the group (`beit-deploy -q export ...`), kept for the command it runs (Group.main restores
    it when the command ends); a command's own flag wins."""
    import inspect

    from ..core import progress

    takes = set(inspect.signature(command).parameters) & {"quiet", "verbose"}  # a command that also reads them

    @functools.wraps(command)
    def wrapper(*args, quiet=False, verbose=False, **kwargs):
        if quiet and verbose:
            raise click.UsageError("-q/--quiet and -v/--verbose contradict each other: give one")
        before = os.environ.get(progress.VERBOSITY_ENV)
        # neither flag: the group's (or the environment's) level, applied to the third-party loggers too
        progress.set_verbosity(progress.QUIET if quiet else progress.VERBOSE if verbose else progress.verbosity())
        level = progress.verbosity()
        kwargs.update({k: v for k, v in (("quiet", level <= progress.QUIET), ("verbose", level >= progress.VERBOSE))
                       if k in takes})
        try:
            return command(*args, **kwargs)
        finally:
            if not for_group:
                _restore(before)

    wrapper = click.option("-v", "--verbose", is_flag=True,
                           help="Also show third-party libraries' logs (Polygraphy, ModelOpt, ONNX Runtime, "
                                "transformers).")(wrapper)
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress lines or bars: results, warnings, notes and errors only.")(wrapper)


def _restore(level: str | None) -> None:
    from ..core import progress

    if level is None:
        os.environ.pop(progress.VERBOSITY_ENV, None)
    else:
        os.environ[progress.VERBOSITY_ENV] = level


class Group(click.Group):
    """The command group: click's own usage errors (a bad value, an unknown option, a missing argument) come out
    as the tool's one `error:` line naming the command's --help, exit 2, like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from ..core.progress import VERBOSITY_ENV

        before = os.environ.get(VERBOSITY_ENV)  # `beit-deploy -q CMD` sets it for CMD only
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            click.echo(f"error: {_usage_message(exc)}", err=True)
            code = 2
        except click.ClickException as exc:
            click.echo(f"error: {_lower(exc.format_message())}", err=True)
            code = exc.exit_code
        except click.Abort:
            click.echo("interrupted", err=True)
            code = 130
        except OSError as exc:
            if exc.errno != errno.EPIPE:  # a closed pipe (`| head`) ends the output, as click's standalone mode
                raise
            code = 1
        finally:
            _restore(before)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _usage_message(exc: click.UsageError) -> str:
    """"invalid value for '--top-k': 0 is not in the range x>=1 (see `beit-deploy predict --help`)"."""
    where = exc.ctx.command_path if exc.ctx is not None else "beit-deploy"
    return f"{_lower(exc.format_message())} (see `{where} --help`)"


def _lower(message: str) -> str:
    message = message.strip().rstrip(".")
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def friendly(command):
    """Run a command; turn BeitDeployError (and anything unexpected) into one line and an exit code. Every command
    has it, so it also gives every command -q/-v (verbosity_options)."""
    return verbosity_options(_one_line_errors(command))


def _one_line_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_raises():
                return command(*args, **kwargs)
        except (KeyboardInterrupt, Terminated) as stop:
            terminated = isinstance(stop, Terminated)
            click.echo("terminated" if terminated else "interrupted", err=True)
            sys.exit(143 if terminated else 130)
        except BrokenPipeError:  # stdout closed early (`| head`): the reader has what it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
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
