"""`beit-deploy`: a thin click layer over the library. Errors become one line on stderr and a non-zero exit.

SIGTERM stops a command like Ctrl-C does (clean-up runs, nothing half-written is left): exit 143, 130 for SIGINT.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from .core.errors import BeitDeployError, EnvironmentProblem, MissingDependencyError, UsageError, describe, \
    environment_error
from .core.jsontext import dumps as _json
from .core.signals import Terminated, sigterm_raises
from .runtime.preprocess import DEFAULT_MAX_PIXELS

# Optional packages -> the extra that installs them, for the one-line hint when a command needs one.
EXTRAS = {"torch": "export", "transformers": "export", "onnx": "export", "onnxscript": "export",
          "onnx_ir": "export", "polygraphy": "export", "tensorrt": "gpu"}


def _friendly(command):
    """Run a command; turn BeitDeployError (and anything unexpected) into one line and an exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_raises():
                return command(*args, **kwargs)
        except (KeyboardInterrupt, Terminated) as stop:
            terminated = isinstance(stop, Terminated)
            click.echo("terminated" if terminated else "interrupted", err=True)
            sys.exit(143 if terminated else 130)
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback on request
            exc = _missing_extra(exc, command.__name__) or _environment(exc, command.__name__) or exc
            if isinstance(exc, BeitDeployError):
                click.echo(f"error: {exc}", err=True)
                sys.exit(exc.exit_code)
            if os.environ.get("BEIT_DEPLOY_DEBUG"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {describe(exc)} "
                       "(set BEIT_DEPLOY_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(70)
    return wrapper


def _environment(exc: Exception, command: str) -> EnvironmentProblem | None:
    """A full or read-only disk, a permission, too little memory: the environment's error, said as such."""
    if isinstance(exc, MemoryError):
        return EnvironmentProblem(f"`beit-deploy {command}` ran out of memory: free some memory, or use a smaller "
                                  "resolution, batch size or image")
    return environment_error(exc, f"`beit-deploy {command}`")


def _missing_extra(exc: Exception, command: str) -> MissingDependencyError | None:
    """An optional package a command needs and cannot import, as the error naming the extra that installs it."""
    root = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    return MissingDependencyError(root, EXTRAS[root], f"`beit-deploy {command}`") if root in EXTRAS else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="beit-deploy")
def main():
    """Export BEiT models to ONNX and TensorRT, run them, and prove they answer like the original."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@_friendly
def models(as_json):
    """List the registered microsoft/beit-* checkpoints."""
    from .core.registry import CHECKPOINTS

    rows = [{"name": c.name, "task": c.task, "resolution": c.resolution, "size": c.size, "labels": c.num_labels,
             "hub_id": c.hub_id} for c in CHECKPOINTS.values()]
    if as_json:
        click.echo(_json(rows, indent=2))
        return
    click.echo(f"{'name':36} {'task':22} {'res':>4} {'size':6} {'labels':>6}")
    for r in rows:
        click.echo(f"{r['name']:36} {r['task']:22} {r['resolution']:>4} {r['size']:6} {r['labels']:>6}")


@main.command()
@click.option("--model", "-m", required=True,
              help="Registered short name (see `models`), hub id (org/name) or local save_pretrained folder.")
@click.option("--resolution", "-r", "resolutions", multiple=True,
              help="N or HxW, multiples of the patch size; repeat for several. Default: the model's native one.")
@click.option("--fp16", is_flag=True, help="Also write the mixed-precision fp16 graph.")
@click.option("--random-weights", is_flag=True, help="Seeded random weights instead of pretrained ones.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-weights.")
@click.option("--out", "out_dir", default="export", show_default=True, type=click.Path(file_okay=False),
              help="Artifact folder; results go to OUT/<model>/<H>x<W>/.")
@click.option("--bias-mode", type=click.Choice(["materialised", "gathered"]), default=None,
              help="How the relative position bias is stored. Default: chosen by size.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of photos for the parity check. Default: samples/images.")
@_friendly
def export(model, resolutions, fp16, random_weights, seed, out_dir, bias_mode, images):
    """Export a BEiT model to ONNX, one validated graph per resolution."""
    from .exporter.loading import ModelSpec
    from .exporter.pipeline import ExportOptions, export_each, parse_resolution

    options = ExportOptions(resolutions=tuple(parse_resolution(r) for r in resolutions), fp16=fp16,
                            out_dir=Path(out_dir), bias_mode=bias_mode, images=Path(images) if images else None)
    for result in export_each(ModelSpec(model, random_weights, seed), options):  # each said as soon as written
        _echo_export(result)
    _engines_after_export(result.folder if len(resolutions) <= 1 else result.folder.parent, fp16)


def _echo_export(result) -> None:
    m = result.manifest
    click.echo(f"{result.folder}: {m.task}, {m.resolution[0]}x{m.resolution[1]}, weights {m.weights['kind']}")
    for precision, figures in m.parity.items():
        worst = max(figures["outputs"], key=lambda o: o["rel"])
        top1 = f", top-1 {worst['top1']:.0%}" if worst.get("top1") is not None else ""
        if worst.get("top1_ties"):
            top1 += f" ({worst['top1_ties']} tie(s) below fp16 resolution)"
        click.echo(f"  {precision}: {m.artifacts[precision]} ({m.graph[precision]['nodes']} nodes), "
                   f"max rel err {worst['rel']:.1e}, min cosine {worst['cosine']:.6f}{top1}: passed")


@main.command()
@click.option("--model", "-m", required=True, help="Registered short name, hub id or local save_pretrained folder.")
@click.option("--random-weights", is_flag=True, help="Seeded random weights instead of pretrained ones.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-weights.")
@click.option("--resolution", "-r", default=None, help="N or HxW. Default: the model's native one.")
@click.option("--backends", default="eager,sdpa,onnxruntime,onnxruntime-fp16,tensorrt", show_default=True,
              help="Comma-separated: eager, sdpa, onnxruntime, onnxruntime-fp16, onnxruntime-plain, tensorrt. "
                   "eager is always measured (the baseline).")
@click.option("--batch-sizes", default="1,4,16,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of the torch backends (and of the TensorRT graph).")
@click.option("--iters", default=10, show_default=True, help="Timed iterations per backend and batch size.")
@click.option("--warmup", default=2, show_default=True, help="Untimed iterations first.")
@click.option("--no-end-to-end", is_flag=True, help="Skip the end-to-end predict() row on the sample photos.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Photos for the end-to-end row and the export's parity check. Default: samples/images.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Where exports for benchmarking are kept. Default: ~/.cache/beit-deploy/bench.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--markdown", "markdown_file", type=click.Path(dir_okay=False), default=None,
              help="Write the tables as markdown.")
@_friendly
def bench(model, random_weights, seed, resolution, backends, batch_sizes, device, dtype, iters, warmup,
          no_end_to_end, images, cache_dir, json_file, markdown_file):
    """Benchmark eager and SDPA transformers against the exported graphs; print markdown tables."""
    from .bench.report import BenchSettings, default_cache, to_markdown
    from .bench.run import run_bench
    from .exporter.loading import ModelSpec
    from .exporter.pipeline import parse_resolution

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes '{batch_sizes}' is not a comma-separated list of integers") from None
    settings = BenchSettings(
        spec=ModelSpec(model, random_weights, seed), resolution=parse_resolution(resolution) if resolution else None,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()), batch_sizes=sizes, device=device,
        dtype=dtype, iters=iters, warmup=warmup, end_to_end=not no_end_to_end,
        cache_dir=Path(cache_dir) if cache_dir else default_cache(), images=Path(images) if images else None)
    report = run_bench(settings)
    markdown = to_markdown(report)
    if json_file:
        Path(json_file).write_text(_json(report.to_dict(), indent=2) + "\n")
    if markdown_file:
        Path(markdown_file).write_text(markdown)
    click.echo(markdown)


# --- TensorRT: build, inspect (and the engines step of `export`) -------------------------------------------------


def _engines_after_export(folder: Path, fp16: bool) -> None:
    """Build engines for a fresh export where TensorRT and a GPU are present; else say how to build them later."""
    from .core.engine_manifest import unavailable_reason
    from .trt.build import BuildOptions, build as build_engines

    reason = unavailable_reason()
    if reason:
        click.echo(f"TensorRT engines: skipped ({reason}); build them later on a GPU machine with "
                   f"`beit-deploy build {folder}`")
        return
    for engine in build_engines(folder, BuildOptions(precision="fp16" if fp16 else "fp32")):
        click.echo(f"TensorRT engine: {engine}")


@main.command()
@click.argument("export_path", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Which exported graph to build: the mixed-precision fp16 one or fp32.")
@click.option("--batch", default="1:8:32", show_default=True, help="Batch range MIN:OPT:MAX of the profile (or N).")
@click.option("--workspace", "workspace_gb", type=float, default=None, help="Builder workspace in GB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file, reused across builds. Default: OUT/timing.cache.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level (0-5).")
@click.option("--out", "out_dir", default="engines", show_default=True, type=click.Path(file_okay=False),
              help="Engines go to OUT/<model>/<H>x<W>/.")
@_friendly
def build(export_path, precision, batch, workspace_gb, timing_cache, opt_level, out_dir):
    """Build TensorRT engines from an export (a resolution folder, or a model folder: every resolution)."""
    from .trt.build import BuildOptions, build as build_engines, parse_batch

    options = BuildOptions(precision=precision, batch=parse_batch(batch), workspace_gb=workspace_gb,
                           timing_cache=Path(timing_cache) if timing_cache else None, opt_level=opt_level,
                           out_dir=Path(out_dir))
    for engine in build_engines(Path(export_path), options):
        click.echo(str(engine))


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_friendly
def inspect(path, as_json):
    """Inputs, outputs and make-up of an ONNX graph (anywhere) or a TensorRT engine (on its GPU)."""
    from .trt.inspect import format_report, inspect_path

    report = inspect_path(Path(path))
    click.echo(_json(report, indent=2) if as_json else format_report(report))


@main.command()
@click.argument("path", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="ONNX graph to run. Default: fp16 with a GPU provider (and an fp16 graph), else fp32.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write each label map as a PNG of class ids here.")
@click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write each photo with coloured classes and a legend here.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per backend call (default 8).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse larger images (checked from the file header, before decoding); 0: no limit of ours.")
@click.option("--no-hash-check", is_flag=True,
              help="Check the graph's size but not its sha256 when opening (saves ~1.3 s per GB).")
@_friendly
def predict(path, images, top_k, precision, as_json, masks_dir, overlay_dir, batch_size, max_pixels, no_hash_check):
    """Run an export (resolution folder, ONNX file or TensorRT engine) on IMAGES (files or folders)."""
    from .core import tasks
    from .core.progress import say
    from .runtime.palette import output_name, save_mask, save_overlay
    from .runtime.preprocess import collect_images
    from .runtime.runner import BeitTRTRunner, pick_resolution

    files = collect_images(images)
    folder = Path(path)
    source = pick_resolution(folder, None) if folder.is_dir() else folder
    failed, taken = 0, set()
    with BeitTRTRunner(source, precision=precision, batch_size=batch_size, check_hashes=not no_hash_check,
                       max_pixels=max_pixels) as runner:
        if (masks_dir or overlay_dir) and tasks.task(runner.task).answer != tasks.LABEL_MAP:
            raise UsageError(f"--masks/--overlay need a segmentation model; this one does {runner.task}")
        for n, p in enumerate(runner.predict_each(files, top_k, keep_rgb=bool(overlay_dir)), 1):
            if len(files) >= 10:
                say(f"[{n}/{len(files)}] {p.image}")
            if p.error is not None:
                click.echo(f"error: {p.error}", err=True)
                failed += 1
                continue
            click.echo(_json({"image": p.image, **p.result.to_dict()}) if as_json
                       else f"{p.image}\n{p.result.summary()}")
            if masks_dir or overlay_dir:
                name = output_name(p.image, taken)
                if masks_dir:
                    save_mask(p.result.label_map, Path(masks_dir) / name)
                if overlay_dir:
                    save_overlay(p.rgb, p.result.label_map, runner.labels, Path(overlay_dir) / name)
    if failed:
        click.echo(f"error: {failed} of {len(files)} images could not be read", err=True)
        sys.exit(1)


# --- verify / compare (proof stage) -----------------------------------------------------------------------------
def _verify_images(images):
    """--images given once as a folder -> that folder; several files -> the list; none -> None (sample photos)."""
    if not images:
        return None
    return images[0] if len(images) == 1 and Path(images[0]).is_dir() else list(images)


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--images", multiple=True, type=click.Path(exists=True),
              help="A folder of photos, or photo files (repeat). Default: samples/images.")
@click.option("--random", "random_inputs", default=2, show_default=True, help="Random inputs besides the photos.")
@click.option("--reference", default=None,
              help="Model to compare with instead of the manifest's source (folder, short name or hub id).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON to this file.")
@_friendly
def verify(path, images, random_inputs, reference, json_file):
    """Prove every artifact of an export answers like the eager model (exit 1 naming each failed check)."""
    from .core.errors import ParityError
    from .proof.verify import parity_report

    report = parity_report(Path(path), images=_verify_images(images), random=random_inputs, reference=reference)
    if json_file:
        Path(json_file).write_text(_json(report.to_dict(), indent=2) + "\n")
    click.echo(report.table())
    if not report.passed:
        raise ParityError("parity failed: " + "; ".join(str(f) for f in report.failures))


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--runners", default="onnxrt-fp32,onnxrt-fp16,torch,trt", show_default=True,
              help="Comma-separated: onnxrt-fp32, onnxrt-fp16, torch, trt. Each is compared with torch.")
@click.option("--images", multiple=True, type=click.Path(exists=True),
              help="A folder of photos, or photo files (repeat). Default: samples/images.")
@click.option("--random", "random_inputs", default=2, show_default=True, help="Random inputs besides the photos.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. Default: per precision.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance. Default: per precision.")
@click.option("--cosine", type=float, default=None, help="Minimum cosine similarity. Default: per precision.")
@click.option("--reference", default=None, help="Model for the torch runner instead of the manifest's source.")
@click.option("--save-inputs", type=click.Path(dir_okay=False), default=None, help="Polygraphy JSON of the feeds.")
@click.option("--save-outputs", type=click.Path(dir_okay=False), default=None,
              help="Polygraphy RunResults JSON of every runner's outputs.")
@_friendly
def compare(path, runners, images, random_inputs, atol, rtol, cosine, reference, save_inputs, save_outputs):
    """Compare runners on an export with Polygraphy's Comparator; its PASSED/FAILED report, its exit status."""
    from .core.errors import ParityError
    from .proof.compare import CompareOptions, compare as run_compare

    options = CompareOptions(
        runners=tuple(r.strip() for r in runners.split(",") if r.strip()), images=_verify_images(images),
        random=random_inputs, atol=atol, rtol=rtol, cosine=cosine, reference=reference,
        save_inputs=Path(save_inputs) if save_inputs else None,
        save_outputs=Path(save_outputs) if save_outputs else None)
    outcome = run_compare(Path(path), options)
    for name, reason in outcome.skipped.items():
        click.echo(f"skipped {name}: {reason}")
    if not outcome.passed:
        raise ParityError("comparison FAILED: " + ", ".join(outcome.failed()))
    click.echo("comparison PASSED: " + ", ".join(f"{a} vs {b}" for a, b, _ in outcome.pairs))
