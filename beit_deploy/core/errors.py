"""Typed errors. The library raises these; the CLI prints their message as one line and exits non-zero.

Every message says what went wrong, where, and what to do about it.
"""

import errno


class BeitDeployError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UsageError(BeitDeployError):
    """A bad argument: unknown model, bad resolution, wrong kind of path."""

    exit_code = 2


class ModelLoadError(BeitDeployError):
    """A model could not be loaded: missing config, broken weights, unreachable hub."""


class ExportError(BeitDeployError):
    """Tracing, graph rewriting or saving an ONNX graph failed."""


class ParityError(BeitDeployError):
    """An artifact does not answer like the eager model within its precision's thresholds."""


class ArtifactError(BeitDeployError):
    """An artifact on disk is missing, truncated, or does not match its manifest."""


class ServerError(BeitDeployError):
    """The Triton server could not be found, started, or did not become ready."""


class TritonServerError(BeitDeployError):
    """A running Triton server cannot be reached, does not serve the model, or answered a request with an error
    (the client's side; ServerError is `serve`'s)."""


class EnvironmentProblem(BeitDeployError):
    """The machine, not the input, stopped a step: a read-only or full disk, no permission, too little memory."""


# errno -> what to do about it, for errors the environment causes (not bugs of ours)
ENVIRONMENT_ERRNOS = {
    errno.EACCES: "check the permissions, or choose another folder",
    errno.EPERM: "check the permissions, or choose another folder",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "free some disk space, or choose a folder on another disk",
    errno.EDQUOT: "free some space within your disk quota, or choose another folder",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENOMEM: "free some memory, or use a smaller resolution or batch",
}


def environment_error(exc: BaseException, doing: str, after: str = "") -> "EnvironmentProblem | None":
    """The one-line error for an OSError the environment caused while `doing` something (None for any other
    exception): what failed, on which path, what to do. `after` is appended (e.g. "nothing was written")."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f" ('{exc.filename}')" if exc.filename else ""
    tail = f"; {after}" if after else ""
    return EnvironmentProblem(f"{doing} failed: {exc.strerror or describe(exc)}{where}: "
                              f"{ENVIRONMENT_ERRNOS[exc.errno]}{tail}")


class MissingDependencyError(BeitDeployError):
    """An optional package is needed for this step and is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed: "
            f"pip install 'beit-deploy[{extra}]'"
        )
        self.package = package
        self.extra = extra


def describe(exc: BaseException, limit: int = 200) -> str:
    """One line for a message: the exception's text with whitespace collapsed, cut at `limit` characters (its
    type name when it has no text)."""
    text = " ".join(str(exc).split())
    return (text[:limit] + "...") if len(text) > limit else text or type(exc).__name__


def require(module: str, extra: str, purpose: str):
    """Import `module` lazily, or raise MissingDependencyError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
