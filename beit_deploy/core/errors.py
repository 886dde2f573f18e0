"""Typed errors. The library raises these; the CLI prints their message as one line and exits non-zero.

Every message says what went wrong, where, and what to do about it.
"""


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
