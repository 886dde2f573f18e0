"""manifest.json: the contract between stages. Each CLI command reads what the previous one wrote here.

Also the things every stage needs to find and read such folders: `resolution_folders` (which folders of an
export hold a manifest), `read_versioned` (a versioned JSON manifest with a clear error when it is not one) and
`check_artifact` (an artifact file, contained in its folder and matching the bytes and sha256 recorded).

A manifest is untrusted input: every file name in it must be a plain name inside its folder, and its numbers
must make sense (positive sizes, Pillow's filters, a non-zero std), or it is refused when read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ArtifactError, UsageError
from .files import artifact_files, bare_name, contained, file_sha256
from .machine import versions  # the versions an artifact records (this_run), importable from here as before
from .progress import say

FILENAME = "manifest.json"
FORMAT_VERSION = 1
PIL_BILINEAR, PIL_BICUBIC = 2, 3
PIL_FILTERS = range(6)  # NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING (PIL.Image.Resampling)
SHA256 = re.compile(r"[0-9a-f]{64}")


def _positive_ints(value, what: str, count: int = 2) -> None:
    if len(value) != count or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{what} {list(value)} is not {count} positive integers")


def _finite(value, what: str, nonzero: bool = False) -> None:
    ok = len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 and (v != 0 or not nonzero) for v in value)
    if not ok:
        raise ValueError(f"{what} {list(value)} is not 3 finite{' non-zero' if nonzero else ''} numbers")


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

    def __post_init__(self):
        """ValueError for settings no processor could use (a zero std would write NaN into every pixel)."""
        _positive_ints(self.size, "size")
        if self.crop_size is not None:
            _positive_ints(self.crop_size, "crop_size")
        if self.resample not in PIL_FILTERS or isinstance(self.resample, bool):
            raise ValueError(f"resample {self.resample!r} is not one of Pillow's filters (0-5; 2 bilinear, 3 bicubic)")
        r = self.rescale_factor
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"rescale_factor {r!r} is not a positive number")
        _finite(self.image_mean, "image_mean")
        _finite(self.image_std, "image_std", nonzero=True)

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


# How the graph holds the relative position bias (manifest.bias_mode): a materialised (heads, T, T) tensor per
# layer, or the tables plus one shared gather index (large resolutions).
MATERIALISED, GATHERED = "materialised", "gathered"
BIAS_MODES = (MATERIALISED, GATHERED)
# How the graph spells attention (manifest.attention): MatMul/Add/Softmax/MatMul ops, or one ONNX Attention op per
# layer (opset 23), which TensorRT's ONNX parser reads from 10.14 on.
DECOMPOSED, FUSED = "decomposed", "fused"
ATTENTION_FORMS = (DECOMPOSED, FUSED)
ATTENTION_MIN_TENSORRT = {FUSED: (10, 14)}


@dataclass(frozen=True)
class Manifest:
    """What one resolution folder holds and how it was made. `artifacts` are plain file names in the folder."""

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
    labels: dict[int, str]  # class id -> name; transformers' placeholder LABEL_<id> where a config has no names
    artifacts: dict[str, str]  # precision -> ONNX file name
    parity: dict[str, dict] = field(default_factory=dict)  # precision -> Parity.to_dict()
    graph: dict[str, dict] = field(default_factory=dict)  # precision -> {"nodes", "ops", "bytes"}
    # quantized precision (int8, fp8, int8cpu) -> how it was made: tool, version, method, calibration, placement
    quantization: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    attention: str = DECOMPOSED  # FUSED: one ONNX Attention op per layer (opset 23); absent in older manifests
    format_version: int = FORMAT_VERSION
    # file name -> sha256 of every artifact file and external data file; {} in manifests of beit-deploy
    # before 0.2, whose artifacts are checked by size only
    sha256: dict[str, str] = field(default_factory=dict)
    # the exports that made the folder's artifacts, oldest first (see `this_run`); [] in older manifests
    runs: list[dict] = field(default_factory=list)
    # where `labels` come from when not the model's own config: {"set": "imagenet-1k", "note": ...} for a
    # registered checkpoint exported with random weights (its known class names); {} otherwise
    labels_from: dict = field(default_factory=dict)

    def __post_init__(self):
        """ValueError for a manifest that names files outside its folder or has impossible numbers."""
        bare_name(self.model, "model name")
        _positive_ints(self.resolution, "resolution")
        _positive_ints((self.patch_size,), "patch_size", 1)
        for precision, name in self.artifacts.items():
            bare_name(name, f"artifact {precision!r}")
        if not isinstance(self.source, dict) or not isinstance(self.weights, dict):
            raise ValueError("source and weights must be JSON objects")
        if not isinstance(self.labels, dict) or not all(isinstance(v, str) for v in self.labels.values()):
            raise ValueError("labels must map class ids to names (strings)")
        for name, digest in self.sha256.items():
            bare_name(name, "sha256 entry")
            if not isinstance(digest, str) or not SHA256.fullmatch(digest):
                raise ValueError(f"sha256 of {name!r} is not 64 lowercase hex digits")

    def files_of(self, precision: str, folder: Path) -> list[str]:
        """File names of an artifact: its file and its external data file, as the manifest records them
        (older manifests without sha256: those of `name`, `name.data` that exist in `folder`)."""
        name = self.artifacts[precision]
        if self.sha256:
            return [f for f in (name, f"{name}.data") if f in self.sha256] or [name]
        return [p.name for p in artifact_files(folder, name)] or [name]

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
        """From manifest.json's dict. Keys this version does not know are ignored, so that a later beit-deploy
        can add optional fields without breaking this reader (this one added `sha256`, which readers before it
        refuse)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
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
        found = data.get("format_version")
        if found != version or isinstance(found, bool):
            said = f"{found!r} (a {type(found).__name__}, not the number {version})" if str(found) == str(version) \
                else repr(found)
            raise ArtifactError(f"{path} has format version {said}, this beit-deploy reads {version}: {redo}")
        return parse(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path} is not a valid {what} ({exc}): {redo}") from exc


def resolution_folders(path: Path) -> dict[str, Path]:
    """The resolution folders of an export: {"<H>x<W>" or the folder's name: folder}, sorted by name.

    `path` is a resolution folder (itself, when it holds a manifest) or a model folder (its subfolders that do;
    never hidden ones, such as the `.<H>x<W>.partial-*` folders of an export in progress or killed).
    UsageError when it is neither.
    """
    path = Path(path)
    if (path / FILENAME).is_file():
        return {path.name: path}
    found = {p.name: p for p in sorted(path.iterdir()) if not p.name.startswith(".") and (p / FILENAME).is_file()
             } if path.is_dir() else {}
    if not found:
        raise UsageError(f"'{path}' is neither a resolution folder nor a model folder of an export (no "
                         f"{FILENAME} in it or its subfolders): pass e.g. export/<model>/224x224")
    return found


def check_artifact(folder: Path, manifest: Manifest, precision: str, hashes: bool = True) -> Path:
    """The path of the `precision` artifact of export folder `folder`, checked to be the one its manifest
    describes: inside the folder, present, of the recorded size, and (`hashes`) of the recorded sha256, file by
    file (external data included). ArtifactError naming the file and saying to export again otherwise."""
    folder = Path(folder)
    if precision not in manifest.artifacts:
        raise UsageError(f"{folder} has no {precision} graph (it has: {', '.join(manifest.artifacts)})")
    files = [contained(folder, name) for name in manifest.files_of(precision, folder)]
    for file in files:
        if not file.is_file():
            raise ArtifactError(f"'{file}' is missing (its manifest lists it): export the model again")
    expected, actual = manifest.graph.get(precision, {}).get("bytes"), sum(f.stat().st_size for f in files)
    if expected is not None and actual != expected:
        raise ArtifactError(f"'{files[0]}' holds {actual} bytes but its manifest says {expected}: the file is "
                            "truncated or from another export; export the model again")
    if hashes and not manifest.sha256:
        say(f"note: {folder / FILENAME} records no sha256 (an export by an older beit-deploy): only sizes are "
            "checked; export again to have the files checked")
    for file in files if hashes else ():
        if file.name in manifest.sha256 and file_sha256(file) != manifest.sha256[file.name]:
            raise ArtifactError(f"'{file}' is not the file this export wrote: its sha256 differs from the one in "
                                f"{FILENAME} (changed, corrupted or swapped for another export's file since): "
                                "export the model again")
    return files[0]


def artifact_hashes(folder: Path, artifacts: dict[str, str]) -> dict[str, str]:
    """{file name: sha256} of every artifact file in `folder` and its external data file, for a manifest."""
    return {p.name: file_sha256(p) for name in artifacts.values() for p in artifact_files(Path(folder), name)}


def this_run(artifacts, packages=None) -> dict:
    """What reproduces this process's export: UTC date, command line, Python, platform, package versions, and
    the precisions it wrote (a folder that accumulated several exports lists one run per export still present)."""
    import platform
    import shlex
    import sys
    from datetime import datetime, timezone

    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": shlex.join(argv),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions() if packages is None else versions(packages), "artifacts": list(artifacts)}

