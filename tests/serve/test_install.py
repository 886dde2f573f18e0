"""What `serve` needs of its environment (serve/install.py), without a server."""

from __future__ import annotations

import importlib.util

import pytest

from beit_deploy.core import errors
from beit_deploy.serve import install, server


def test_server_error_is_a_typed_error_of_core():
    assert install.ServerError is server.ServerError is errors.ServerError
    assert issubclass(errors.ServerError, errors.BeitDeployError)


@pytest.mark.parametrize("module, package", [("PIL", "pillow"), ("onnxruntime", "onnxruntime")])
def test_the_python_models_dependencies_are_checked(monkeypatch, module, package):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None if name == module else find_spec(name))
    with pytest.raises(errors.ServerError, match=f"lacks {package}, which beit-deploy's Python models need"):
        install.check_python_environment()
    monkeypatch.undo()
    install.check_python_environment()
