"""`beit-deploy compare`: Polygraphy's Comparator over an export's runners, with Polygraphy's own report.

Runners (named from the backend and precision tables, as Polygraphy names its runners): onnxrt-<precision>
(Polygraphy's OnnxrtRunner on model.onnx, model.fp16.onnx and the quantized graphs), torch (the eager
transformers model rebuilt from the manifest, as a small BaseRunner; Polygraphy's PytRunner assumes CUDA) and
trt (Polygraphy's TrtRunner on the engine `build` made from this export -- `--engine`, else found under
engines/<model>/<H>x<W> by its source ONNX's sha256 -- or on an engine Polygraphy builds from the ONNX with TF32
off, where TensorRT and a GPU exist; otherwise skipped, saying what would have run). Every runner is compared
with the reference (torch when chosen, else the first) by `SimpleCompareFunc` (atol/rtol per precision) and
`CosineSimilarityCompareFunc`.

The feeds are the photos preprocessed as the manifest says plus seeded random inputs (`parity.parity_feeds`). The
torch runner maps each input back to the image it stands for and normalises it the way the *source* model
does, so a wrong rescale/mean/std written into the manifest makes every runner disagree with torch.
"""

from __future__ import annotations

import collections
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import backends, precisions, tasks
from ..core.engine_manifest import FoundEngine, engine_cannot_run, find_engine, unavailable_reason
from ..core.errors import UsageError, require
from ..core.manifest import Manifest, read_manifest
from ..core.progress import chatty
from ..exporter import parity
from .verify import MAX_RANDOM, feed_dicts, photo_paths, reference_model

EAGER_RUNNER, TRT_RUNNER = backends.compare_name(backends.EAGER), backends.compare_name(backends.TENSORRT)


def runner_names() -> tuple[str, ...]:
    """Every runner `compare` knows, from the tables: ONNX Runtime on each graph (onnxrt-<precision>), the eager
    model (torch) and TensorRT (trt)."""
    return tuple(backends.compare_runners())


def onnx_runners() -> dict[str, str]:
    """{ONNX Runtime runner name: the precision of the graph it runs}."""
    return {name: p for name, p in backends.compare_runners().items() if p is not None}


RUNNERS = runner_names()  # as they were when this module loaded; CompareOptions checks against the tables
# Default tolerances per precision of the runner compared with the reference (elementwise atol OR rtol), from the
# precision table; quantized graphs are judged mainly by cosine, elementwise only for gross errors.
TOLERANCES = {p.name: dict(p.tolerance) for p in precisions.PRECISIONS.values()} | {
    name: dict(row["tolerance"]) for name, row in precisions.LOOSENED.items()}  # tf32: an fp32 engine built --tf32
PURPOSE = "comparing runners with Polygraphy (beit-deploy compare)"


@dataclass(frozen=True)
class CompareOptions:
    """What to compare; None tolerances mean TOLERANCES for each runner's precision."""

    runners: tuple[str, ...] = RUNNERS
    images: object = None  # None (sample photos), a folder, or a list of paths
    random: int = 2
    atol: float | None = None
    rtol: float | None = None
    cosine: float | None = None
    save_inputs: Path | None = None
    save_outputs: Path | None = None
    reference: object = None  # see verify.reference_model
    allow_download: bool = False  # the manifest's source model from the Hub when not cached (default: offline)
    seed: int = 0
    engine: Path | None = None  # the engine for "trt"; None: core.engine_manifest.find_engine's default

    def __post_init__(self):
        known = runner_names()
        unknown = [r for r in self.runners if r not in known]
        if unknown or not self.runners:
            raise UsageError(f"unknown runner(s) {', '.join(unknown) or '(none given)'}: "
                             f"choose from {', '.join(known)}")
        if isinstance(self.random, bool) or not isinstance(self.random, int) or not 0 <= self.random <= MAX_RANDOM:
            raise UsageError(f"--random must be 0 to {MAX_RANDOM} random inputs, got {self.random!r}")
        for name, value, top in (("atol", self.atol, math.inf), ("rtol", self.rtol, math.inf),
                                 ("cosine", self.cosine, 1.0)):
            number = isinstance(value, (int, float)) and math.isfinite(value)
            if value is not None and not (number and 0 <= value <= top):
                limit = "a finite number, 0 or more" if top == math.inf else "between 0 and 1"
                raise UsageError(f"--{name} must be {limit}, got {value!r}")


@dataclass(frozen=True)
class CompareOutcome:
    """Polygraphy's verdict per (runner, reference) pair, and the runners that could not run here and why."""

    passed: bool
    pairs: tuple[tuple[str, str, bool], ...]
    skipped: dict = field(default_factory=dict)

    def failed(self) -> list[str]:
        return [f"{a} vs {b}" for a, b, ok in self.pairs if not ok]

    def to_dict(self) -> dict:
        pairs = [{"runner": a, "reference": b, "passed": ok} for a, b, ok in self.pairs]
        return {"passed": self.passed, "pairs": pairs, "skipped": dict(self.skipped)}


def compare(path, options: CompareOptions = CompareOptions()) -> CompareOutcome:
    """Run the chosen runners on the feeds with Comparator.run, then Comparator.compare_accuracy per pair."""
    require("polygraphy", "export", PURPOSE)
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    # Polygraphy's per-iteration log (stdout, ~40 lines a runner) only with -v; its errors always.
    G_LOGGER.module_severity = G_LOGGER.INFO if chatty() else G_LOGGER.ERROR
    G_LOGGER.colors = chatty()  # else its first error line comes with advice to install `colored`
    folder = Path(path)
    manifest = read_manifest(folder)
    runners, precisions, skipped = _runners(folder, manifest, options)
    if not runners:
        raise UsageError(f"none of the runners {', '.join(options.runners)} can run here: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    feeds = feed_dicts(manifest, photo_paths(options.images), options.random, options.seed)
    results = Comparator.run(runners, data_loader=feeds, save_inputs_path=_str(options.save_inputs),
                             save_outputs_path=_str(options.save_outputs))
    names = [r.name for r in runners]
    ref = names.index(EAGER_RUNNER) if EAGER_RUNNER in names else 0
    pairs = []
    for i, name in enumerate(names):
        if i == ref:
            continue
        funcs = compare_funcs(precisions[name], options)
        ok = bool(Comparator.compare_accuracy(results, comparisons=[(i, ref)], compare_func=funcs))
        pairs.append((name, names[ref], ok))
    return CompareOutcome(all(ok for *_, ok in pairs), tuple(pairs), skipped)


def _str(path) -> str | None:
    return str(path) if path is not None else None


def compare_funcs(precision: str, options: CompareOptions) -> list:
    """SimpleCompareFunc (elementwise: fails where both atol and rtol are exceeded) and cosine similarity."""
    from polygraphy.comparator import CosineSimilarityCompareFunc, SimpleCompareFunc

    tol = TOLERANCES.get(precision) or TOLERANCES[precisions.ENGINE_DEFAULT]
    pick = lambda given, key: tol[key] if given is None else given  # noqa: E731
    return [SimpleCompareFunc(atol=pick(options.atol, "atol"), rtol=pick(options.rtol, "rtol")),
            CosineSimilarityCompareFunc(cosine_similarity_threshold=pick(options.cosine, "cosine"))]


def _runners(folder: Path, manifest: Manifest, options: CompareOptions):
    """-> (Polygraphy runners named as requested, {name: precision}, {skipped name: reason})."""
    runners, precisions, skipped = [], {}, {}
    for name in dict.fromkeys(options.runners):
        made = _make_runner(name, folder, manifest, options)
        if isinstance(made, str):
            skipped[name] = made
            continue
        runner, precision = made
        runners.append(runner)
        precisions[name] = precision
    return runners, precisions, skipped


def _make_runner(name: str, folder: Path, manifest: Manifest, options: CompareOptions):
    """(runner, precision), or the reason `name` cannot run for this folder on this machine. ONNX Runtime and
    TensorRT runners take any number of images: see `batched`."""
    makers = {**dict.fromkeys(onnx_runners(), _onnx_runner), EAGER_RUNNER: _torch_runner, TRT_RUNNER: _trt_runner}
    return makers[name](name, folder, manifest, options)


def _onnx_runner(name: str, folder: Path, manifest: Manifest, options: CompareOptions):
    """Polygraphy's OnnxrtRunner (CPU) on the export's graph of the runner's precision."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    precision = onnx_runners()[name]
    file = manifest.artifacts.get(precision)
    if file is None or not (folder / file).is_file():
        return f"the export has no {precision} graph here (export with {precisions.PRECISIONS[precision].flag} for one)"
    return batched(OnnxrtRunner(SessionFromOnnx(str(folder / file), providers=["cpu"]), name=name)), precision


def _torch_runner(name: str, folder: Path, manifest: Manifest, options: CompareOptions):
    loaded = reference_model(manifest, options.reference, options.allow_download)
    return eager_runner(manifest, loaded, name), precisions.REFERENCE


def _trt_runner(name: str, folder: Path, manifest: Manifest, options: CompareOptions):
    """Polygraphy's TrtRunner on the engine `build` made from this export (checked first to be of this TensorRT
    and GPU: verify's reason when not), or on one Polygraphy builds from the ONNX (profile BUILT_PROFILE)."""
    from ..trt.build import profile_shapes

    found, _ = find_engine(folder, manifest, options.engine)
    fallback = precisions.ENGINE_DEFAULT if precisions.ENGINE_DEFAULT in manifest.artifacts else precisions.REFERENCE
    precision = found.info.judged_as if found else fallback
    if found is not None:
        reason = engine_cannot_run(found, f"would compare {found.describe()}")
        return reason if reason else (batched(_engine_runner(found, name), *batch_range(found.info.profile)),
                                      precision)
    reason = unavailable_reason()
    if reason:
        return (f"would build an engine from {manifest.artifacts[precision]} with Polygraphy (TF32 off) and compare "
                f"it, but {reason}")
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, TrtRunner

    profile, shapes = Profile(), profile_shapes(manifest.inputs, BUILT_PROFILE)
    for input_name, by_key in shapes.items():
        profile.add(input_name, by_key["min"], by_key["opt"], by_key["max"])
    network = NetworkFromOnnxPath(str(folder / manifest.artifacts[precision]), strongly_typed=True)
    config = CreateConfig(profiles=[profile], tf32=False)
    runner = TrtRunner(EngineFromNetwork(network, config), name=name)
    return batched(runner, BUILT_PROFILE[0], BUILT_PROFILE[2]), precision


BUILT_PROFILE = (1, 2, 8)  # the batch profile of the engine compare builds itself


def _engine_runner(found: FoundEngine, name: str):
    """Polygraphy's TrtRunner on an engine file `build` wrote (after engine_cannot_run said it can run here)."""
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    return TrtRunner(EngineFromPath(str(found.path)), name=name)


def batch_range(profile: dict) -> tuple[int, int]:
    """(MIN, MAX) batch of an engine.json profile (every input has the same batch range)."""
    shapes = next(iter(profile.values()))
    return int(shapes["min"][0]), int(shapes["max"][0])


def batched(runner, low: int = 1, high: int | None = None):
    """`runner` (a Polygraphy runner) taking any number of images: the feeds go through the runner's splitting
    and padding (`runtime.backends.run_in_batches`) to batches of low..high, and the outputs are copies."""
    return _batched_runner_class()(runner, low, high)


@functools.cache
def _batched_runner_class():
    from polygraphy.backend.base import BaseRunner

    from ..runtime.backends import run_in_batches

    class BatchedRunner(BaseRunner):
        """Another Polygraphy runner, fed in chunks its batch range accepts; same name, so reports read alike."""

        def __init__(self, inner, low: int, high: int | None):
            super().__init__(name=inner.name, prefix="batched-runner")
            self.inner, self.low, self.high = inner, low, high

        def activate_impl(self):
            self.inner.activate()

        def deactivate_impl(self):
            self.inner.deactivate()

        def get_input_metadata_impl(self):
            return self.inner.get_input_metadata(use_numpy_dtypes=False)

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = run_in_batches(lambda chunk: self.inner.infer(chunk), dict(feed_dict), self.low, self.high)
            self.inference_time = time.perf_counter() - start
            return collections.OrderedDict(out)

    return BatchedRunner


def renormaliser(manifest: Manifest, loaded) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each (3,): pixels normalised per the manifest -> the same image per the source model.

    manifest: p = (x * r_m - mean_m) / std_m; source: q = (x * r_s - mean_s) / std_s, so q = p * scale + shift.
    Identity when the manifest is right.
    """
    m, s = manifest.preprocessing, loaded.preprocessing
    std_m, mean_m = np.asarray(m.image_std, np.float64), np.asarray(m.image_mean, np.float64)
    std_s, mean_s = np.asarray(s.image_std, np.float64), np.asarray(s.image_mean, np.float64)
    ratio = s.rescale_factor / m.rescale_factor
    return std_m * ratio / std_s, (mean_m * ratio - mean_s) / std_s


def eager_runner(manifest: Manifest, loaded, name: str = EAGER_RUNNER):
    """A Polygraphy runner around the eager transformers model (on CPU, outputs as float32 numpy)."""
    return _eager_runner_class()(loaded.model, manifest, renormaliser(manifest, loaded), name)


@functools.cache
def _eager_runner_class():
    """EagerRunner, defined on first use so that polygraphy is imported only when a comparison runs."""
    require("polygraphy", "export", PURPOSE)
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class EagerRunner(BaseRunner):
        """transformers' model as a Polygraphy runner: inputs per the manifest, outputs the task's."""

        def __init__(self, model, manifest: Manifest, renorm: tuple[np.ndarray, np.ndarray], name: str):
            super().__init__(name=name, prefix="eager-runner")
            self.model, self.manifest = model, manifest
            self.scale, self.shift = (v.astype(np.float32).reshape(1, 3, 1, 1) for v in renorm)

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for spec in self.manifest.inputs:
                meta.add(spec.name, dtype=np.dtype(spec.dtype), shape=[None if d == "batch" else d for d in spec.shape])
            return meta

        def infer_impl(self, feed_dict):
            """pixel_values (B, 3, H, W) renormalised for the source model [+ bool_masked_pos] -> float32 outputs."""
            feeds = dict(feed_dict)
            feeds["pixel_values"] = feeds["pixel_values"] * self.scale + self.shift
            start = time.perf_counter()
            out = parity.eager_outputs(self.model, tasks.task(self.manifest.task).outputs, feeds)
            self.inference_time = time.perf_counter() - start
            return collections.OrderedDict(out)

    return EagerRunner


__all__ = ["compare", "CompareOptions", "CompareOutcome"]
