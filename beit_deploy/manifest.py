"""manifest.json: the contract between stages. Each CLI command reads what the previous one wrote here."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ArtifactError
from .registry import Preprocessing

FILENAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape with "batch" for the dynamic axis, numpy dtype name."""

    name: str
    shape: tuple
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass(frozen=True)
class Manifest:
    """What one resolution folder holds and how it was made. Paths in `artifacts` are relative to the folder."""

    model: str  # folder-safe model name
    source: dict  # {"kind": "registry"|"hub"|"local", "model": what the user passed}
    weights: dict  # {"kind": "pretrained"|"random", "seed": int|None}
    task: str
    resolution: tuple[int, int]
    patch_size: int
    bias_mode: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Preprocessing
    labels: dict[int, str]
    artifacts: dict[str, str]  # precision -> ONNX file name
    parity: dict[str, dict] = field(default_factory=dict)  # precision -> Parity.to_dict()
    graph: dict[str, dict] = field(default_factory=dict)  # precision -> {"nodes", "ops", "bytes"}
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolution"] = list(self.resolution)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["preprocessing"] = self.preprocessing.to_dict()
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        d = dict(d)
        d["resolution"] = tuple(d["resolution"])
        d["inputs"] = tuple(TensorSpec.from_dict(t) for t in d["inputs"])
        d["outputs"] = tuple(TensorSpec.from_dict(t) for t in d["outputs"])
        d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        return cls(**d)

    def write_to(self, folder: Path) -> "Manifest":
        (Path(folder) / FILENAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return self


def read_manifest(folder: Path) -> Manifest:
    """The manifest of an export folder, with a clear error when it is missing or unreadable."""
    return read_versioned(Path(folder) / FILENAME, FORMAT_VERSION, Manifest.from_dict,
                          made_by="`beit-deploy export` (e.g. export/<model>/224x224)", redo="export the model again")


def read_versioned(path: Path, version: int, parse, made_by: str, redo: str, what: str = "beit-deploy manifest"):
    """`parse(json of path)` for a beit-deploy manifest file of format `version`; ArtifactError saying how to
    get a good one (`made_by`, `redo`) when it is missing, unreadable or of another version."""
    if not path.is_file():
        raise ArtifactError(f"'{path.parent}' has no {path.name}: pass a folder written by {made_by}")
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != version:
            raise ArtifactError(f"{path} has format version {data.get('format_version')}, this beit-deploy reads "
                                f"{version}: {redo}")
        return parse(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path} is not a valid {what} ({exc}): {redo}") from exc


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` to `folder`, replacing an earlier one only once the new one is complete."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def versions() -> dict[str, str]:
    """Versions of the packages that made an artifact."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("beit-deploy", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
