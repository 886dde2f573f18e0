"""manifest.json: the contract between stages. Each CLI command reads what the previous one wrote here.

Also the two things every stage needs to find and read such folders: `resolution_folders` (which folders of an
export hold a manifest) and `read_versioned` (a versioned JSON manifest with a clear error when it is not one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ArtifactError, UsageError

FILENAME = "manifest.json"
FORMAT_VERSION = 1
PIL_BILINEAR, PIL_BICUBIC = 2, 3


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
class Preprocessing:
    """BEiT image preprocessing: resize to (height, width), rescale, normalise, optional centre crop."""

    size: tuple[int, int]
    resample: int = PIL_BILINEAR
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_size: tuple[int, int] | None = None

    def at_resolution(self, resolution: tuple[int, int]) -> "Preprocessing":
        """The same settings, resizing (or cropping) to an export resolution instead of the native one."""
        if self.crop_size is not None:
            return Preprocessing(self.size, self.resample, self.rescale_factor, self.image_mean, self.image_std,
                                 tuple(resolution))
        return Preprocessing(tuple(resolution), self.resample, self.rescale_factor, self.image_mean, self.image_std)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "resample": self.resample, "rescale_factor": self.rescale_factor,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "crop_size": list(self.crop_size) if self.crop_size else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(tuple(d["size"]), int(d["resample"]), float(d["rescale_factor"]), tuple(d["image_mean"]),
                   tuple(d["image_std"]), tuple(d["crop_size"]) if d.get("crop_size") else None)


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
    # quantized precision (int8, fp8, int8cpu) -> how it was made: tool, version, method, calibration, placement
    quantization: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    attention: str = "decomposed"  # "fused": one ONNX Attention op per layer (opset 23); absent in older manifests
    format_version: int = FORMAT_VERSION

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (H / patch, W / patch)."""
        return self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size

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


def resolution_folders(path: Path) -> dict[str, Path]:
    """The resolution folders of an export: {"<H>x<W>" or the folder's name: folder}, sorted by name.

    `path` is a resolution folder (itself, when it holds a manifest) or a model folder (its subfolders that do).
    UsageError when it is neither.
    """
    path = Path(path)
    if (path / FILENAME).is_file():
        return {path.name: path}
    found = {p.name: p for p in sorted(path.iterdir()) if (p / FILENAME).is_file()} if path.is_dir() else {}
    if not found:
        raise UsageError(f"'{path}' is neither a resolution folder nor a model folder of an export (no "
                         f"{FILENAME} in it or its subfolders): pass e.g. export/<model>/224x224")
    return found


def versions(packages=("beit-deploy", "torch", "transformers", "onnx", "onnxruntime", "onnxscript")) -> dict[str, str]:
    """Versions of the packages that made an artifact."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
