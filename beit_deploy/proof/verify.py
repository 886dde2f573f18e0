"""Proof that an export answers like the model it came from: `parity_report(folder)` and its table.

The reference is the eager transformers model rebuilt from the manifest (`source.model`, or the recorded seed for
random weights) fed by transformers' own image processor with the *source* model's preprocessing. Every artifact
of the export (model.onnx, model.fp16.onnx, and the TensorRT engine `build` made from one of them, where TensorRT
and a GPU exist: see `core.engine_manifest.find_engine`) is fed by
beit-deploy's numpy preprocessing with the *manifest's* settings, so a wrong normalisation written into a
manifest shows up as well as a wrong graph. Both sides get each photo turned upright by its EXIF orientation
first, as the runner sees it, so a sideways phone photo compares models, not EXIF handling. Random inputs go to
both sides unchanged. Every artifact's size and sha256 are checked against the manifest before it runs.

Figures per artifact and output come from `parity.measure` (max abs, max|diff|/max|ref|, mean abs, lowest
per-sample cosine) and `parity.agreement` (top-1/top-5 for classification, label-map pixels for segmentation);
the verdict uses `parity.THRESHOLDS` for the artifact's precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..core import precisions, tasks
from ..core.engine_manifest import FoundEngine, engine_cannot_run, find_engine
from ..core.errors import ModelLoadError, UsageError, describe
from ..core.manifest import Manifest, check_artifact, read_manifest
from ..core.progress import step, tracked
from ..exporter import parity

Images = Union[None, str, Path, Sequence[Union[str, Path]]]
ONNX_ARTIFACTS = tuple(precisions.PRECISIONS)  # as they were when this module loaded; `_artifacts` reads the table
MAX_RANDOM = 64  # random inputs per check: enough to show batch effects; each costs an eager forward pass


@dataclass(frozen=True)
class OutputReport(parity.OutputParity):
    """parity.OutputParity's figures of one output against eager, plus decision agreement (fractions of
    samples or pixels): top-5 sets, top-1 on the photos alone, label-map pixels."""

    top5: float | None = None
    top1_photos: float | None = None
    pixels: float | None = None

    @property
    def output(self) -> str:
        return self.name


@dataclass(frozen=True)
class ArtifactReport:
    """One artifact: `name` is fp32, fp16 or engine; `skipped` says why it was not run (None: it was)."""

    name: str
    file: str
    precision: str
    outputs: tuple[OutputReport, ...] = ()
    skipped: str | None = None


@dataclass(frozen=True)
class Failure:
    """A failed check, named by (artifact, output, metric); `detail` has the value and the limit."""

    artifact: str
    output: str
    metric: str
    detail: str

    def __str__(self) -> str:
        return f"{self.artifact}/{self.output}/{self.metric}: {self.detail}"


@dataclass(frozen=True)
class ParityReport:
    """Side-by-side parity of every artifact of one export folder against the eager model."""

    folder: str
    model: str
    task: str
    weights: str
    photos: int
    random: int
    artifacts: tuple[ArtifactReport, ...]
    failures: tuple[Failure, ...] = ()
    thresholds: dict = field(default_factory=lambda: dict(parity.THRESHOLDS))
    unreadable: tuple[str, ...] = ()  # photos left out because they could not be read, each with its reason

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = {**asdict(self), "passed": self.passed}
        for art in d["artifacts"]:  # the report's JSON names each output "output"
            art["outputs"] = [{"output": o.pop("name"), **o} for o in art["outputs"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ParityReport":
        d = {k: v for k, v in d.items() if k != "passed"}
        arts = tuple(ArtifactReport(**{**a, "outputs": tuple(OutputReport(**{"name": o["output"], **{
            k: v for k, v in o.items() if k != "output"}}) for o in a["outputs"])}) for a in d.pop("artifacts"))
        failures = tuple(Failure(**f) for f in d.pop("failures"))
        return cls(**{**d, "unreadable": tuple(d.get("unreadable", ()))}, artifacts=arts, failures=failures)

    def table(self) -> str:
        """Human-readable: one row per artifact and output, then the verdict naming every failed check."""
        head = (f"parity of {self.folder} ({self.task}, weights {self.weights}) against eager transformers on "
                f"{self.photos} photos + {self.random} random inputs")
        head += "".join(f"\nleft out, unreadable: {line}" for line in self.unreadable)
        rows = [f"{'artifact':9} {'output':18} {'max abs':>9} {'rel':>9} {'mean abs':>9} {'cosine':>10} "
                f"{'top-1':>6} {'top-5':>6} {'pixels':>7}  verdict"]
        for art in self.artifacts:
            if art.skipped:
                rows.append(f"{art.name:9} skipped: {art.skipped}")
            for o in art.outputs:
                bad = any(f.artifact == art.name and f.output == o.name for f in self.failures)
                rows.append(f"{art.name:9} {o.name:18} {o.max_abs:9.2e} {o.rel:9.2e} {o.mean_abs:9.2e} "
                            f"{o.cosine:10.6f} {_pct(o.top1):>6} {_pct(o.top5):>6} {_pct(o.pixels):>7}  "
                            f"{'FAILED' if bad else 'passed'}")
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(str(f) for f in self.failures)
        return "\n".join([head, *rows, verdict])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def parity_report(path, images: Images = None, random: int = 2, reference=None, seed: int = 0,
                  engine: Path | None = None, allow_download: bool = False) -> ParityReport:
    """Run eager and every artifact in export folder `path` on photos + `random` random inputs; compare.

    images: None (samples/images), a folder, or a list of image paths. reference: None (rebuild from the
    manifest), or a model to use instead (short name, hub id or save_pretrained folder, or a LoadedModel).
    engine: the TensorRT engine (file or folder) to include; None: the one `build` wrote for this export under
    engines/<model>/<H>x<W>, found by its source ONNX's sha256. Without TensorRT its row says what would run.
    allow_download: let the manifest's source model come from the Hugging Face Hub when it is not in the local
    cache (default: never; a manifest is untrusted input, and verify works offline).

    Every artifact's size and sha256 are checked, and every photo read, before the eager model loads: a tampered
    artifact is refused at once, and an unreadable photo is left out with its reason (`unreadable`).
    """
    if isinstance(random, bool) or not isinstance(random, int) or not 0 <= random <= MAX_RANDOM:
        raise UsageError(f"random inputs must be 0 to {MAX_RANDOM}, got {random!r}")
    folder = Path(path)
    manifest = read_manifest(folder)
    for name in precisions.PRECISIONS:
        if name in manifest.artifacts and (folder / manifest.artifacts[name]).is_file():
            check_artifact(folder, manifest, name, hashes=True)
    photos, unreadable = parity.readable_photos(photo_paths(images), "verify")
    loaded = reference_model(manifest, reference, allow_download)
    ref_feeds, art_feeds = _feeds(manifest, loaded, photos, random, seed)
    names = tasks.task(manifest.task).outputs
    with step(f"running the eager reference ({len(photos)} photos + {max(random, 0)} random inputs)"):
        refs = [parity.eager_outputs(loaded.model, names, f) for f in tracked(ref_feeds, "eager", unit="batch")]
    n_photo = 2 if photos else 0  # parity_feeds: the photos as one batch, then the first photo alone
    reports, failures = [], list(_preprocessing_failures(manifest, loaded))
    for name, file, precision, run_or_reason in _artifacts(folder, manifest, engine):
        if isinstance(run_or_reason, str):
            reports.append(ArtifactReport(name, file, precision, skipped=run_or_reason))
            continue
        with step(f"running {name} ({file})", total=len(art_feeds), unit="batch") as running:
            gots = []
            for f in art_feeds:
                gots.append(run_or_reason(f))
                running.advance()
        outputs = _figures(manifest.task, precision, refs, gots, n_photo)
        reports.append(ArtifactReport(name, file, precision, outputs))
        failures += _verdict(name, precision, outputs)
    seed = manifest.weights.get("seed")
    weights = manifest.weights["kind"] + (f" (seed {seed})" if seed is not None else "")
    return ParityReport(str(folder), manifest.model, manifest.task, weights, len(photos), max(random, 0),
                        tuple(reports), tuple(failures), unreadable=unreadable)


def photo_paths(images: Images) -> list[Path]:
    """None -> the sample photos; a folder -> its photos; a list -> those paths (checked to exist)."""
    if images is None or isinstance(images, (str, Path)):
        folder = Path(images) if images is not None else None
        if folder is not None and not folder.is_dir():
            return photo_paths([folder])
        return parity.sample_images(folder)
    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"image(s) not found: {', '.join(missing)}")
    return paths


def reference_model(manifest: Manifest, reference=None, allow_download: bool = False):
    """The eager model the export came from (or `reference`), checked to have the export's task. The model a
    manifest names is read from the local Hugging Face cache only unless `allow_download`; one the caller
    names (`reference`) is loaded as `export` would load it."""
    from ..exporter.loading import LoadedModel, ModelSpec, load_model

    if isinstance(reference, LoadedModel):
        loaded = reference
    else:
        where = str(reference) if reference is not None else _source_model(manifest)
        random = manifest.weights.get("kind") == "random"
        seed = manifest.weights.get("seed") or 0
        revision = (manifest.source.get("commit") or manifest.source.get("revision")) if reference is None else None
        spec = ModelSpec(where, random_weights=random, seed=seed if isinstance(seed, int) else 0,
                         offline=reference is None and not allow_download,
                         revision=None if random and manifest.source.get("kind") != "hub" else revision)
        try:
            loaded = load_model(spec)
        except (ModelLoadError, UsageError) as exc:
            hint = " or allow the download with --allow-download" if spec.offline else ""
            raise ModelLoadError(f"cannot rebuild the eager model of {manifest.model} from '{where}' ({exc}); "
                                 f"pass the original model with --reference (a save_pretrained folder or hub id)"
                                 f"{hint}") from exc
    if loaded.task != manifest.task:
        raise UsageError(f"reference model is a {loaded.task} model but the export is {manifest.task}: pass the "
                         "model the export was made from")
    return loaded


def _source_model(manifest: Manifest) -> str:
    """The model the manifest says the export came from; ModelLoadError when it does not say (a hand-edited or
    damaged manifest)."""
    model = manifest.source.get("model") if isinstance(manifest.source, dict) else None
    if not isinstance(model, str) or not model:
        raise ModelLoadError(f"the manifest of {manifest.model} does not name its source model (source.model is "
                             f"{model!r}): pass the model it was exported from with --reference")
    return model


def feed_dicts(manifest: Manifest, photos: list[Path], random: int = 2, seed: int = 0) -> list[dict]:
    """Artifact feeds: photos (N, 3, H, W) preprocessed per the manifest as one batch and the first alone, then
    one batch of `random` random images; bool_masked_pos (B, patches) where the graph takes it."""
    from ..runtime.preprocess import preprocess

    pixels = preprocess(photos, manifest.preprocessing) if photos else _no_pixels(manifest)
    return parity.parity_feeds(manifest.inputs, pixels, random, seed)


def _feeds(manifest: Manifest, loaded, photos: list[Path], random: int, seed: int):
    """(eager feeds, artifact feeds): the same photos through each side's preprocessing, same random inputs."""
    source_pp = loaded.preprocessing.at_resolution(manifest.resolution)
    ref_px = parity.reference_pixels(photos, source_pp) if photos else _no_pixels(manifest)
    return parity.parity_feeds(manifest.inputs, ref_px, random, seed), feed_dicts(manifest, photos, random, seed)


def _no_pixels(manifest: Manifest) -> np.ndarray:
    return np.zeros((0, 3, *manifest.resolution), np.float32)


def _preprocessing_failures(manifest: Manifest, loaded) -> list[Failure]:
    """The manifest's preprocessing must be the source model's at the export resolution, field by field."""
    source = loaded.preprocessing.at_resolution(manifest.resolution).to_dict()
    written = manifest.preprocessing.to_dict()
    same = lambda a, b: np.allclose(np.asarray(a or 0, float), np.asarray(b or 0, float))  # noqa: E731
    return [Failure("manifest", "preprocessing", key, f"{written[key]} but the source model says {source[key]}")
            for key in source if not same(written[key], source[key])]


def _artifacts(folder: Path, manifest: Manifest, engine: Path | None = None):
    """(name, file, precision, run(feeds) -> outputs | reason it is skipped) for every artifact of the export."""
    for name in precisions.PRECISIONS:
        file = manifest.artifacts.get(name)
        if file is None:
            continue
        if not (folder / file).is_file() and not (folder / file).is_symlink():
            yield name, file, name, f"{file} is not in this folder"
            continue  # hashes were checked before the eager model loaded; the size again now
        yield name, file, name, _onnx_runner(check_artifact(folder, manifest, name, hashes=False))
    found, passed_over = find_engine(folder, manifest, engine)
    if found is not None:
        yield "engine", str(found.path), found.info.judged_as, _engine_runner(found, manifest)
    elif passed_over:
        yield "engine", "-", "-", "no engine of this export: " + "; ".join(passed_over)


def _onnx_runner(path: Path):
    from ..runtime.backends import CPU, OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, providers=CPU).run_batched


def _engine_runner(found: FoundEngine, manifest: Manifest):
    """A run function for the engine (any number of images: the runner's splitting and padding to its profile),
    or what would run and why it cannot here (no TensorRT, no GPU, another TensorRT version or GPU, ...)."""
    reason = engine_cannot_run(found, f"would run {found.describe()} against eager")
    if reason:
        return reason
    try:
        from ..runtime.tensorrt_backend import TensorRTBackend

        backend = TensorRTBackend(found.path, manifest)
    except Exception as exc:  # noqa: BLE001 - any reason the engine cannot load here is a skip, said as such
        return f"{found.path} cannot run here ({describe(exc)})"
    return backend.run_batched


def _figures(task: str, precision: str, refs: list[dict], gots: list[dict], n_photo: int) -> tuple[OutputReport, ...]:
    """Per output: parity.measure's figures plus decision agreement, over all samples (photos: first batches)."""
    stats = parity.measure(precision, task, refs, gots)
    photo_stats = parity.measure(precision, task, refs[:n_photo], gots[:n_photo]) if n_photo else None
    reports = []
    for i, s in enumerate(stats.outputs):
        ref = np.concatenate([r[s.name] for r in refs]).astype(np.float64)
        got = np.concatenate([g[s.name] for g in gots]).astype(np.float64)
        agree = parity.agreement(task, ref, got)
        reports.append(OutputReport(**{**asdict(s), "top1": agree.get("top1")}, top5=agree.get("top5"),
                                    top1_photos=photo_stats.outputs[i].top1 if photo_stats else None,
                                    pixels=agree.get("pixels")))
    return tuple(reports)


def _verdict(artifact: str, precision: str, outputs: tuple[OutputReport, ...]) -> list[Failure]:
    """parity.THRESHOLDS[precision] per output (a top-1 flip on a tie below fp16's resolution is not a failure)."""
    return [Failure(artifact, o.name, metric, detail)
            for o in outputs for metric, detail in parity.threshold_failures(precision, o)]
