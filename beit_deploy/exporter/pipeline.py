"""The export stage: model -> per resolution, baked fp32 ONNX (+ mixed-precision fp16), validated, manifest.

Each resolution is built in a hidden temporary folder beside its destination and renamed into place only when
every graph passed its parity check, so a failed export leaves nothing behind and never touches an earlier
export of the same model and resolution. The destination is always `<out>/<model>/<H>x<W>` with a folder-safe
model name, and a resolution whose eager check cannot fit in this machine's memory is refused before any
weights are loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..core import precisions, tasks
from ..core.errors import ParityError, UsageError, environment_error
from ..core.files import artifact_bytes, atomic_folder, check_output_folder, safe_name
from ..core.heap import large_blocks_unmapped, release_memory
from ..core.machine import versions
from ..core.manifest import Manifest, artifact_hashes, this_run
from ..core.progress import say, step
from . import accumulate, bake, fp16, graph_files, onnx_graph, parity
from .quantize import QDQ_PRECISIONS, QuantizeOptions, calibration_photos, choose_tools, quantize_graphs
from .data_loader import write_data_loader
from .loading import LoadedModel, ModelSpec, Resolved, load_model, native_resolution, resolve, weights_sha256

FP32_FILE, FP16_FILE = (precisions.PRECISIONS[p].file for p in (precisions.REFERENCE, "fp16"))
VALIDATION_CHUNK = 2  # images per ONNX Runtime call when a graph is validated


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Empty `resolutions` means the model's native one."""

    resolutions: tuple[tuple[int, int], ...] = ()
    fp16: bool = False
    out_dir: Path = Path("export")
    bias_mode: str | None = None  # None: chosen by size (bake.choose_bias_mode)
    attention: str = bake.DECOMPOSED  # or bake.FUSED: one ONNX Attention op per layer (opset 23)
    images: Path | None = None  # parity photos; None: parity.sample_images()
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)  # int8/fp8 Q/DQ, CPU int8 (after fp16)
    replace: bool = False  # replace an earlier export of another graph form whole (see exporter.accumulate)

    def __post_init__(self):
        if self.bias_mode is not None and self.bias_mode not in bake.BIAS_MODES:
            raise UsageError(f"bias mode '{self.bias_mode}' is not one of {', '.join(bake.BIAS_MODES)}")
        if self.attention not in bake.ATTENTION_FORMS:
            raise UsageError(f"attention '{self.attention}' is not one of {', '.join(bake.ATTENTION_FORMS)}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The graphs this export writes, in table order: the reference, and each one whose option is on."""
        return tuple(p.name for p in precisions.PRECISIONS.values()
                     if p.option is None or getattr(self, p.option, False) or getattr(self.quantize, p.option, False))


def export_options(wanted, calibration: Path | None = None, quantize: dict | None = None, **kwargs) -> ExportOptions:
    """ExportOptions writing the graphs of the `wanted` precisions (besides the reference): each row's option is
    set on the options class that has it (ExportOptions: fp16; QuantizeOptions: the quantized graphs).
    `kwargs`: ExportOptions' other fields; `calibration` and `quantize`: QuantizeOptions' other fields."""
    options = {precisions.PRECISIONS[p].option for p in wanted if precisions.PRECISIONS[p].option}
    mine = {f.name for f in dataclasses.fields(ExportOptions)}
    quantize = QuantizeOptions(calibration=calibration, **(quantize or {}), **{o: True for o in options - mine})
    return ExportOptions(quantize=quantize, **kwargs, **{o: True for o in options & mine})


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    manifest: Manifest
    kept: tuple[str, ...] = ()  # precisions kept from an earlier export in the same folder


def parse_resolution(text: str) -> tuple[int, int]:
    """'384' -> (384, 384); '320x192' -> (320, 192) as (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if not match:
        raise UsageError(f"resolution '{text}' is not N or HxW (e.g. 224 or 320x192)")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def check_resolution(resolution: tuple[int, int], patch_size: int) -> None:
    h, w = resolution
    if h <= 0 or w <= 0 or h % patch_size or w % patch_size:
        def near(x):
            return max(patch_size, round(x / patch_size) * patch_size)
        raise UsageError(f"resolution {h}x{w} is not made of whole {patch_size}-pixel patches: use positive "
                         f"multiples of {patch_size}, e.g. {near(h)}x{near(w)}")


def export(spec: ModelSpec, options: ExportOptions, resolved: Resolved | None = None) -> list[ExportResult]:
    """Load the model once and export every requested resolution. Returns one result per resolution.
    `resolved`: `loading.resolve(spec)` when the caller has it already."""
    return list(export_each(spec, options, resolved))


def export_each(spec: ModelSpec, options: ExportOptions, resolved: Resolved | None = None) -> Iterator[ExportResult]:
    """`export`, one result at a time as each resolution is written (so a later failure leaves the earlier
    results reported). Every resolution is checked (whole patches, memory) before the weights load."""
    resolved = resolved or resolve(spec)
    photos = _checked_photos(options.images)
    for resolution in options.resolutions or (native_resolution(resolved.config),):
        check_resolution(resolution, resolved.config.patch_size)
        check_memory(resolved.config, resolution, max(len(photos), 2))
    choose_tools(options.quantize)  # and on a quantizer that is not installed
    check_output_folder(options.out_dir)
    if any(p in QDQ_PRECISIONS for p in options.quantize.precisions):  # an empty calibration folder: now, not
        calibration_photos(options.quantize.calibration or options.images)  # after the fp32 export
    loaded = load_model(spec, resolved)
    with step("hashing the weights (what tells this export's graphs from others')"):
        loaded = dataclasses.replace(loaded, weights_sha256=weights_sha256(loaded.model))
    chosen = options.resolutions or (loaded.native_resolution,)
    for resolution in chosen:  # every earlier export of another form refused before the first one is written
        accumulate.refuse_other_form(*_planned(loaded, resolution, options), options.replace)
    for resolution in chosen:
        yield export_resolution(loaded, resolution, options)


def export_resolution(loaded: LoadedModel, resolution: tuple[int, int], options: ExportOptions) -> ExportResult:
    """Export one resolution into `<out>/<model>/<H>x<W>`, adding to an earlier export of the same graph form
    there (exporter.accumulate) or refusing, before any work, one of another form unless `options.replace`."""
    if loaded.weights_sha256 is None:
        loaded = dataclasses.replace(loaded, weights_sha256=weights_sha256(loaded.model))
    folder, planned = _planned(loaded, resolution, options)
    say(f"exporting {loaded.name} at {resolution[0]}x{resolution[1]} -> {folder}")
    accumulate.check_earlier(folder, planned, options.replace)
    mode = planned.bias_mode
    done: dict = {}

    def merge(tmp: Path, dest: Path) -> None:  # under the model folder's lock, just before the swap
        done["manifest"], done["kept"] = accumulate.merge_into(tmp, dest, done["manifest"], options.replace)

    try:
        with atomic_folder(folder, before_swap=merge) as tmp:
            done["manifest"] = _build(loaded, resolution, mode, options, tmp)
    except OSError as exc:  # a read-only or full disk, no permission: say so in one line
        raise environment_error(exc, f"writing {folder}", "nothing was written") or exc
    return ExportResult(folder, done["manifest"], done["kept"])


def _planned(loaded: LoadedModel, resolution: tuple[int, int], options: ExportOptions):
    """(the resolution's folder, the graph form this export gives it)."""
    folder = Path(options.out_dir) / safe_name(loaded.name) / f"{resolution[0]}x{resolution[1]}"
    mode = options.bias_mode or bake.choose_bias_mode(loaded.config, resolution)
    return folder, accumulate.GraphForm(loaded.task, loaded.weights_sha256, options.attention, mode,
                                        loaded.preprocessing.at_resolution(resolution).to_dict(),
                                        accumulate.describe_weights(loaded.source_record, loaded.weights_record))


def _checked_photos(images: Path | None) -> list[Path]:
    """The parity photos, each decoded once now so an unreadable one is named before any work is done."""
    from ..runtime.preprocess import ImageError, open_image

    photos = parity.sample_images(images)
    for photo in photos:
        try:
            open_image(photo)
        except ImageError as exc:
            raise UsageError(f"parity photo {exc}; remove it from the --images folder") from None
    return photos


def estimated_bytes(config, resolution: tuple[int, int], batch: int) -> int:
    """A lower bound of the memory an export at `resolution` needs: the captured bias of every layer, the
    eager check's attention (scores, softmax and bias, batch x heads x T^2 floats each, T = patches + 1) and two
    copies of the weights (the eager model's, which the baked model shares, and the graph's working copy)."""
    heads, layers, hidden = config.num_attention_heads, config.num_hidden_layers, config.hidden_size
    tokens = (resolution[0] // config.patch_size) * (resolution[1] // config.patch_size) + 1
    return bake.bias_bytes(config, resolution) + 3 * batch * heads * tokens**2 * 4 + 2 * 12 * layers * hidden**2 * 4


def check_memory(config, resolution: tuple[int, int], batch: int) -> None:
    """UsageError when an export at `resolution` cannot fit in this machine's memory at all (before any
    allocation); a warning when it does not fit in the memory free now."""
    need, total, free = estimated_bytes(config, resolution, batch), *_memory()
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    if total and need > total:
        raise UsageError(f"resolution {resolution[0]}x{resolution[1]} needs at least {gib(need)} of memory to "
                         f"export and check (the attention bias grows with the 4th power of the side), and this "
                         f"machine has {gib(total)}: choose a smaller resolution")
    if free and need > free:
        say(f"warning: resolution {resolution[0]}x{resolution[1]} needs at least {gib(need)} of memory and "
            f"{gib(free)} is free now; the export may run out of memory")


def _memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of memory for this process: physical memory or its cgroup limit if lower,
    and MemAvailable; None where the system does not say."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if "SC_PHYS_PAGES" in getattr(
        os, "sysconf_names", {}) else None
    limit = _read("/sys/fs/cgroup/memory.max")
    if limit.isdigit():
        total = min(total or int(limit), int(limit))
    free = [int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemAvailable:")]
    return total, free[0] if free else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _build(loaded: LoadedModel, resolution: tuple[int, int], mode: str, options: ExportOptions, tmp: Path) -> Manifest:
    with step(f"baking the relative position bias ({mode}, {options.attention} attention)"):
        baked = bake.bake(loaded.model, resolution, mode, options.attention)
    fp32_path = onnx_graph.onnx_from_model(baked, loaded.task, resolution, tmp / FP32_FILE)
    del baked
    release_memory()
    graph = graph_files.load_graph(fp32_path)
    onnx_graph.check_graph(graph)
    outputs = graph_files.tensor_specs(graph.graph.output)
    del graph
    release_memory()
    artifacts = {precisions.REFERENCE: FP32_FILE}
    if options.fp16:
        fp16.fp16_from_onnx(fp32_path, loaded.task, tmp / FP16_FILE)
        artifacts["fp16"] = FP16_FILE
        release_memory()
    inputs = tasks.input_specs(loaded.task, loaded.config, resolution)
    preprocessing = loaded.preprocessing.at_resolution(resolution)
    judge = _Judge(loaded, inputs, preprocessing, options.images)
    results = {precision: judge(precision, tmp / file) for precision, file in artifacts.items()}
    _fail_on(loaded, results)
    quantization = {}
    for q in quantize_graphs(fp32_path, loaded.task, inputs, preprocessing, options.quantize, judge,
                             options.images, loaded.spec.seed):
        artifacts[q.precision], results[q.precision], quantization[q.precision] = q.file, q.parity, q.info
    manifest = _manifest(loaded, resolution, mode, inputs, outputs, preprocessing, artifacts, results, tmp,
                         options.attention, quantization).write_to(tmp)
    write_data_loader(tmp, manifest)  # for `polygraphy run model.onnx --data-loader-script data_loader.py`
    return manifest


class _Judge:
    """judge(precision, graph file) -> parity.Parity of that graph in ONNX Runtime (CPU) against the eager model
    on the parity photos and random inputs; the eager outputs are computed once, here."""

    def __init__(self, loaded, inputs, preprocessing, images: Path | None):
        self.loaded = loaded
        photos = parity.sample_images(images)
        pixels = parity.reference_pixels(photos, preprocessing) if photos else _no_photos()
        self.batches = parity.parity_feeds(inputs, pixels, random=2, seed=loaded.spec.seed)
        names = tasks.task(loaded.task).outputs
        with step(f"running eager transformers for validation ({len(photos)} photos + 2 random inputs)",
                  total=len(self.batches), unit="batch") as running:
            self.refs = []
            for feeds in self.batches:
                self.refs.append(parity.eager_outputs(loaded.model, names, feeds))
                running.advance()

    def __call__(self, precision: str, path: Path) -> parity.Parity:
        from ..runtime.backends import CPU, OnnxRuntimeBackend

        count = sum(len(next(iter(feeds.values()))) for feeds in self.batches)
        with step(f"validating {path.name} against eager transformers", total=count, unit="img") as running:
            with large_blocks_unmapped(), OnnxRuntimeBackend(path, providers=CPU, memory_arena=False) as backend:
                gots = [_run_in_chunks(backend, feeds, running.advance) for feeds in self.batches]
            release_memory()
            result = parity.measure(precision, self.loaded.task, self.refs, gots)
        say("  " + result.summary())
        return result


def _run_in_chunks(backend, feeds: dict, advance=lambda n: None) -> dict:
    """backend.run on VALIDATION_CHUNK images at a time, outputs joined: batch > 1 is still exercised, and the
    activations of a large graph stay bounded (beit-large@512's fp16 graph on CPU: 12.9 GB at batch 5).
    `advance(n)` is told of each chunk's n images (the step's progress bar)."""
    import numpy as np

    n = len(next(iter(feeds.values())))
    parts = []
    for i in range(0, n, VALIDATION_CHUNK):
        parts.append(backend.run({k: v[i:i + VALIDATION_CHUNK] for k, v in feeds.items()}))
        advance(min(VALIDATION_CHUNK, n - i))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _fail_on(loaded, results: dict) -> None:
    """ParityError naming every float graph that missed its thresholds."""
    failed = [r for r in results.values() if not r.passed]
    if failed:
        raise ParityError(f"{loaded.name}: the exported graph does not match the eager model "
                          f"({'; '.join(f.precision + ': ' + ', '.join(f.failures) for f in failed)}); "
                          "nothing was written. Please report this with the model and resolution")


def _no_photos():
    import numpy as np

    say(f"  {parity.NO_PHOTOS}; validating on random inputs only")
    return np.zeros((0,), dtype=np.float32)


def _manifest(loaded, resolution, mode, inputs, outputs, preprocessing, artifacts, results, tmp, attention,
              quantization) -> Manifest:
    graphs = {}
    for precision, file in artifacts.items():
        model = graph_files.load_graph(tmp / file)
        graphs[precision] = {"nodes": len(model.graph.node), "ops": graph_files.op_counts(model),
                             "bytes": artifact_bytes(tmp, file)}
    return Manifest(
        model=loaded.name, source=loaded.source_record, weights=loaded.weights_record,
        task=loaded.task, resolution=tuple(resolution), patch_size=loaded.config.patch_size, bias_mode=mode,
        inputs=tuple(inputs), outputs=tuple(outputs), preprocessing=preprocessing, labels=loaded.labels,
        artifacts=artifacts, parity={p: r.to_dict() for p, r in results.items()}, graph=graphs,
        attention=attention, quantization=quantization, versions=versions(), sha256=artifact_hashes(tmp, artifacts),
        runs=[this_run(artifacts)], labels_from=loaded.labels_from)

