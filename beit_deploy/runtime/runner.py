"""`BeitRunner`: an exported BEiT model as a function from images to answers, on ONNX Runtime or TensorRT.

    with BeitRunner("export/beit-base-patch16-224/224x224") as runner:
        print(runner.predict("cat.jpg").to_dict())

The runner reads the export's manifest (task, resolution, preprocessing, labels), preprocesses like
transformers' BeitImageProcessorPil (see preprocess.py), runs the backend in batches, and post-processes per task
(see answers.py). Only numpy, Pillow and ONNX Runtime load here; TensorRT only for engine files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..core import backends as backend_table, precisions, tasks
from ..core.engine_manifest import ENGINE_FILE, ENGINE_MANIFEST, ENGINE_SUFFIXES, read_engine_manifest
from ..core.errors import ArtifactError, BeitDeployError, MissingDependencyError, UsageError
from ..core.files import contained
from ..core.manifest import FILENAME, Manifest, check_artifact, read_manifest, resolution_folders
from . import answers, postprocess as post
from .backends import Backend, OnnxRuntimeBackend, available_providers, has_gpu_provider
from .predictor import Prediction, Predictor  # Prediction: also importable from here
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, Prepared, check_max_pixels, prepare, preprocess

PRECISIONS = tuple(precisions.PRECISIONS)  # the names when this module loaded; the runner reads the table itself
DEFAULT_BATCH = 8
Result = post.Result


class BeitRunner(Predictor):
    """An exported BEiT model, ready to predict.

    path: a resolution folder written by `beit-deploy export` (export/<model>/<H>x<W>), an ONNX file in such a
    folder, an engine folder written by `beit-deploy build` (engines/<model>/<H>x<W>), or a TensorRT engine file
    (.engine/.plan) next to its manifest.
    precision: a row of the precision table, core/precisions.py (fp32, fp16, int8, fp8, int8cpu; ONNX only: an
    engine has its own), chosen by `precisions.choose`. Default: fp16 when the export has the fp16 graph and ONNX
    Runtime has a GPU provider (TensorRT or CUDA), else fp32, since fp16 on CPU is slower and less exact;
    quantized graphs are never chosen for you. "int8": the dynamic CPU graph (int8cpu) on CPU, the Q/DQ graph
    with a GPU provider (`runner.precision` says which ran).
    backend: None (ONNX Runtime on the best provider installed: TensorRT, CUDA, then CPU), one of the ONNX Runtime
    device choices of the backend table ("cpu", "cuda", "tensorrt"), or a ready Backend instance.
    batch_size: largest batch sent to the backend at once (default 8, and never above the backend's max_batch).
    check_hashes: check the ONNX files' sha256 against the manifest when opening (default; their sizes are
    checked always). About 1.3 s per GB here; False skips it for very large graphs on slow disks.
    max_pixels: images with more pixels are refused (from the file header, before decoding); None or 0: no
    limit of beit-deploy's own (Pillow's decompression-bomb limit still applies).
    threads: ONNX Runtime's intra-op threads (default: its own choice, one per core); several runners sharing a
    machine (batch workers) each take their share.
    """

    def __init__(self, path, precision: str | None = None, backend: Backend | str | None = None,
                 batch_size: int | None = None, check_hashes: bool = True,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, threads: int | None = None):
        self.path = Path(path)
        self.manifest, artifact, self.precision = _resolve(self.path, precision)
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size or DEFAULT_BATCH
        self.max_pixels = check_max_pixels(max_pixels)
        self._closed = False
        self.backend = backend if isinstance(backend, Backend) else _open_backend(artifact, self.manifest, backend,
                                                                                  check_hashes, threads)
        _check_matches(self.backend, self.manifest, artifact)

    @classmethod
    def from_dir(cls, export_dir, resolution: int | str | tuple[int, int] | None = None, **kwargs) -> "BeitRunner":
        """The runner for one resolution of an export/<model> folder; `resolution` may be 384, "384x384" or
        (384, 384), and may be left out when the folder has only one."""
        return cls(pick_resolution(Path(export_dir), resolution), **kwargs)

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def labels(self) -> dict[int, str]:
        return self.manifest.labels

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.manifest.resolution)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, task={self.task!r}, precision={self.precision!r}, "
                f"backend={self.backend.name!r})")

    # -- the three steps --------------------------------------------------------------------------------------
    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Image(s) -> float32 (N, 3, H, W) pixel values exactly as BeitImageProcessorPil makes them."""
        return preprocess(images, self.manifest.preprocessing, self.max_pixels)

    def run(self, pixel_values: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, H, W) pixel values [+ extra inputs by name] -> raw outputs by name, each (N, ...).

        Masked image modeling takes `bool_masked_pos` (N, num_patches) bool; default: no patch masked.
        Batches above the batch size are split into chunks and the outputs joined; a chunk below the backend's
        smallest batch (a TensorRT profile's MIN) is padded up to it by repeating its last image, and the padded
        rows are dropped from the outputs (every image is computed independently, so the others are unchanged).
        """
        self._check_open()
        pixels = np.asarray(pixel_values, dtype=np.float32)
        expected = tuple(self.manifest.inputs[0].shape[1:])
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise UsageError(f"pixel_values must be (N, {', '.join(map(str, expected))}) for this export, "
                             f"got {tuple(pixels.shape)}: use runner.preprocess(images)")
        feeds = {"pixel_values": pixels, **self._default_extras(len(pixels)), **extra}
        unknown = set(feeds) - {spec.name for spec in self.manifest.inputs}
        if unknown:
            raise UsageError(f"unknown input(s) {sorted(unknown)}: this graph takes "
                             f"{[s.name for s in self.manifest.inputs]}")
        if len(pixels) == 0:
            return {s.name: np.zeros((0, *s.shape[1:]), np.float32) for s in self.manifest.outputs}
        return self.backend.run_batched(feeds, self.batch_size)

    def predict_each(self, images: Sequence[ImageLike], top_k: int = 5, keep_rgb: bool = False
                     ) -> Iterator[Prediction]:
        """One Prediction per input, in order, a batch at a time; an image that cannot be read gives a
        Prediction with `error` set and the others still run. keep_rgb: attach the photo (for overlays).

        Each image is resized as soon as it is decoded, so a batch holds its model inputs and not full-size
        copies (with keep_rgb it holds those too)."""
        self._check_open()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UsageError(f"top_k must be a positive number of classes, got {top_k!r}")
        items = list(images)
        for start in range(0, len(items), self.batch_size):
            loaded = [self._try_prepare(i, keep_rgb) for i in items[start:start + self.batch_size]]
            good = [x for x in loaded if isinstance(x, Prepared)]
            results = self._answers(good, top_k) if good else iter(())
            for x in loaded:
                yield x if isinstance(x, Prediction) else Prediction(x.name, next(results), rgb=x.rgb)

    def _try_prepare(self, image: ImageLike, keep_rgb: bool) -> Prepared | Prediction:
        try:
            return prepare(image, self.manifest.preprocessing, self.max_pixels, keep_rgb)
        except BeitDeployError as exc:
            return Prediction(str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>", error=exc)

    def _answers(self, images: list[Prepared], top_k: int) -> Iterator[Result]:
        """The batch's answers, one at a time as they are asked for: the model runs once for the batch, but each
        answer (a label map at the photo's full size, for segmentation) is made only when the previous one has
        been handed over, so a caller that lets go of each holds one full-size map at a time."""
        task = tasks.task(self.task)
        raw = self.run(np.stack([i.pixels for i in images]))[task.answer_from]
        for k, image in enumerate(images):
            yield answers.answer(task, raw[k], post.Context(image.size, self.manifest.grid, self.labels, top_k))

    def _default_extras(self, n: int) -> dict[str, np.ndarray]:
        return {s.name: np.zeros((n, *s.shape[1:]), dtype=bool) for s in self.manifest.inputs[1:] if s.dtype == "bool"}

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (ONNX Runtime session, TensorRT engine and device memory). Safe to call twice."""
        self._closed = True
        self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"this runner of {self.path} is closed: open a new {type(self).__name__} (or use it "
                             "inside its `with` block)")

    def __enter__(self) -> "BeitRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def __getattr__(name: str):
    """`BeitTRTRunner`, the runner's first name, importable from here as before: it is defined at the package's
    top (beit_deploy.BeitTRTRunner), where its deprecated `parity()` may reach the proof stage."""
    if name == "BeitTRTRunner":
        from .. import BeitTRTRunner

        return BeitTRTRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resolve(path: Path, precision: str | None) -> tuple[Manifest, Path, str]:
    """(manifest, artifact file, precision) for a resolution folder, an engine folder, an ONNX file or an engine
    file. An engine folder (the one with engine.json in it) runs its engine, never the ONNX files its copied
    manifest lists (they are in the export folder, not here)."""
    if precision is not None:
        precisions.precision(precision)  # UsageError naming the known ones
    if not path.exists():
        raise UsageError(f"'{path}' does not exist: pass an export folder (export/<model>/<H>x<W>), its ONNX file, "
                         "or a TensorRT engine")
    if path.is_dir() and (path / ENGINE_MANIFEST).is_file():
        return read_manifest(path), path / ENGINE_FILE, _engine_precision(path / ENGINE_FILE, precision)
    if path.is_dir():
        manifest = read_manifest(path)
        chosen = precisions.choose(precision, manifest.artifacts, has_gpu_provider())
        if chosen not in manifest.artifacts:
            asked = precision or chosen
            raise UsageError(f"{path} has no {asked} graph (it has: {', '.join(manifest.artifacts)}): "
                             f"export with {precisions.export_hint(asked)}, or choose another precision")
        return manifest, contained(path, manifest.artifacts[chosen]), chosen
    manifest = read_manifest(path.parent)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return manifest, path, _engine_precision(path, precision)
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"'{path}' is neither an export folder, an .onnx file nor a TensorRT engine (.engine/.plan)")
    by_file = {file: p for p, file in manifest.artifacts.items()}
    if path.name not in by_file:
        raise UsageError(f"'{path.name}' is not an artifact of {path.parent / FILENAME} (it lists: "
                         f"{', '.join(by_file)})")
    if precision is not None and not precisions.same_family(precision, by_file[path.name]):
        raise UsageError(f"'{path.name}' is the {by_file[path.name]} graph, not {precision}: pass the folder instead")
    return manifest, path, by_file[path.name]


def _engine_precision(path: Path, precision: str | None) -> str:
    """An engine's precision from engine.json beside it (written by `beit-deploy build`), else the one asked."""
    built = read_engine_manifest(path.parent).precision if (path.parent / ENGINE_MANIFEST).is_file() else None
    if precision and built and precision != built:
        raise UsageError(f"'{path}' is a {built} engine, not {precision}: build a {precision} engine")
    return built or precision or precisions.ENGINE_DEFAULT


def _open_backend(artifact: Path, manifest: Manifest, choice: str | None, hashes: bool = True,
                  threads: int | None = None) -> Backend:
    if artifact.suffix.lower() in ENGINE_SUFFIXES:
        return _tensorrt_backend(artifact, manifest)
    chains = backend_table.ONNXRUNTIME.providers
    if choice is not None and choice not in chains:
        raise UsageError(f"backend '{choice}' is not one of {', '.join(chains)} (or a Backend instance)")
    precision = next(p for p, f in manifest.artifacts.items() if f == artifact.name)
    artifact = check_artifact(artifact.parent, manifest, precision, hashes)
    providers = None
    if choice is not None:
        providers = [p for p in chains[choice] if p in available_providers()]
        if providers[0] != chains[choice][0]:
            raise MissingDependencyError("onnxruntime-gpu", backend_table.ONNXRUNTIME.gpu_extra,
                                         f"the ONNX Runtime '{choice}' provider")
    return OnnxRuntimeBackend(artifact, providers=providers, threads=threads)


def _tensorrt_backend(engine: Path, manifest: Manifest) -> Backend:
    """TensorRTBackend from runtime.tensorrt_backend, imported only now (it needs tensorrt and a GPU)."""
    purpose = f"running the TensorRT engine {engine} (on a machine with an NVIDIA GPU)"
    row = backend_table.TENSORRT
    if importlib.util.find_spec(row.module) is None:
        raise MissingDependencyError(row.module, row.extra, purpose)
    try:
        from .tensorrt_backend import TensorRTBackend
    except ImportError as exc:
        raise MissingDependencyError(row.module, row.extra, purpose) from exc
    return TensorRTBackend(engine, manifest)


def _check_matches(backend: Backend, manifest: Manifest, artifact: Path) -> None:
    wanted_in, wanted_out = [s.name for s in manifest.inputs], [s.name for s in manifest.outputs]
    if set(backend.input_names) != set(wanted_in) or not set(wanted_out) <= set(backend.output_names):
        raise ArtifactError(f"'{artifact}' takes {backend.input_names} and gives {backend.output_names}, but its "
                            f"manifest says {wanted_in} -> {wanted_out}: it belongs to another export; export again")


def pick_resolution(export_dir: Path, resolution: int | str | tuple[int, int] | None) -> Path:
    """The resolution folder of export/<model> to use, or a clear error listing the ones there are."""
    if not export_dir.is_dir():
        raise UsageError(f"'{export_dir}' is not a folder: pass export/<model> as written by `beit-deploy export`")
    if (export_dir / FILENAME).is_file() and resolution is None:
        return export_dir
    try:
        found = resolution_folders(export_dir)
    except UsageError:
        raise ArtifactError(f"'{export_dir}' holds no exported resolution (no {FILENAME} in it or its subfolders): "
                            "pass a folder written by `beit-deploy export` (export/<model>/<H>x<W>)") from None
    if resolution is None:
        if len(found) == 1:
            return next(iter(found.values()))
        raise UsageError(f"'{export_dir}' has several resolutions ({', '.join(found)}): choose one")
    if isinstance(resolution, int) or (isinstance(resolution, str) and resolution.isdigit()):
        resolution = (int(resolution), int(resolution))
    name = resolution if isinstance(resolution, str) else f"{resolution[0]}x{resolution[1]}"
    if name not in found:
        raise UsageError(f"'{export_dir}' has no {name} export (it has: {', '.join(found)}): choose one of those or "
                         f"export that resolution")
    return found[name]
