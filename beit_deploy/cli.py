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
          "onnx_ir": "export", "polygraphy": "export", "tensorrt": "gpu", "modelopt": "quantize",
          "tritonclient": "serve"}


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
@click.option("--attention", type=click.Choice(["decomposed", "fused"]), default="decomposed", show_default=True,
              help="Attention as MatMul/Add/Softmax/MatMul ops (every TensorRT 10.x), or as one ONNX Attention op "
                   "per layer (opset 23; TensorRT 10.14+).")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of photos for the parity check. Default: samples/images.")
@click.option("--int8", is_flag=True, help="Also write the int8 Q/DQ graph for TensorRT (model.int8.onnx).")
@click.option("--fp8", is_flag=True, help="Also write the fp8 Q/DQ graph for TensorRT (model.fp8.onnx; ModelOpt).")
@click.option("--int8-cpu", is_flag=True, help="Also write the dynamic int8 graph for ONNX Runtime on CPU.")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of photos to calibrate --int8/--fp8 on (64+ advised). Default: the parity photos.")
@click.option("--int8-method", type=click.Choice(["max", "entropy", "percentile"]), default="max", show_default=True,
              help="Activation calibration of the Q/DQ graphs.")
@click.option("--quantizer", type=click.Choice(["auto", "modelopt", "onnxruntime"]), default="auto",
              show_default=True, help="Q/DQ tool. auto: ModelOpt when installed, else ONNX Runtime (int8 only).")
@_friendly
def export(model, resolutions, fp16, random_weights, seed, out_dir, bias_mode, attention, images, int8, fp8, int8_cpu,
           calibration, int8_method, quantizer):
    """Export a BEiT model to ONNX, one validated graph per resolution."""
    from .exporter.loading import ModelSpec
    from .exporter.pipeline import ExportOptions, export_each, parse_resolution
    from .exporter.quantize import QuantizeOptions

    quantize = QuantizeOptions(int8=int8, fp8=fp8, int8_cpu=int8_cpu, method=int8_method, tool=quantizer,
                               calibration=Path(calibration) if calibration else None)
    options = ExportOptions(resolutions=tuple(parse_resolution(r) for r in resolutions), fp16=fp16,
                            out_dir=Path(out_dir), bias_mode=bias_mode, attention=attention,
                            images=Path(images) if images else None, quantize=quantize)
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
                   f"max rel err {worst['rel']:.1e}, min cosine {worst['cosine']:.6f}{top1}: passed"
                   + _how_quantized(m.quantization.get(precision)))


@main.command()
@click.option("--model", "-m", required=True, help="Registered short name, hub id or local save_pretrained folder.")
@click.option("--random-weights", is_flag=True, help="Seeded random weights instead of pretrained ones.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-weights.")
@click.option("--resolution", "-r", default=None, help="N or HxW. Default: the model's native one.")
@click.option("--backends", default="eager,sdpa,onnxruntime,onnxruntime-fp16,tensorrt", show_default=True,
              help="Comma-separated: eager, sdpa, onnxruntime, onnxruntime-fp16, onnxruntime-fused, onnxruntime-int8 "
                   "(CPU form), onnxruntime-int8-qdq, onnxruntime-plain, tensorrt. eager is always measured.")
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


def _how_quantized(info: dict | None) -> str:
    """' (modelopt 0.47.0, max on 64 images, attention Q/DQ on)' for a quantized graph's line; '' otherwise."""
    if not info:
        return ""
    parts = [f"{info['tool']} {info['version']}"]
    if "calibration" in info:
        parts.append(f"{info['method']} on {info['calibration']['images']} images")
    placement = info.get("placement") or {}
    if "attention_qdq" in placement:
        parts.append(f"attention Q/DQ {'on' if placement['attention_qdq'] else 'off'}"
                     + (f", decoder {placement['decoder']}" if placement.get("decoder") else ""))
    return f" ({', '.join(parts)})"


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
@click.option("--precision", type=click.Choice(["fp16", "fp32", "int8", "fp8"]), default="fp16", show_default=True,
              help="Which exported graph to build: mixed-precision fp16, fp32, or the int8/fp8 Q/DQ graph.")
@click.option("--batch", default="1:8:32", show_default=True, help="Batch range MIN:OPT:MAX of the profile (or N).")
@click.option("--workspace", "workspace_gb", type=float, default=None, help="Builder workspace in GB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file, reused and merged across builds (file-locked). "
                   "Default: OUT/timing-<TensorRT version>-<GPU>.cache.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level (0-5).")
@click.option("--tf32", is_flag=True, help="Allow TF32 for fp32 layers (off by default: fp32 stays fp32).")
@click.option("--out", "out_dir", default="engines", show_default=True, type=click.Path(file_okay=False),
              help="Engines go to OUT/<model>/<H>x<W>/.")
@_friendly
def build(export_path, precision, batch, workspace_gb, timing_cache, opt_level, tf32, out_dir):
    """Build TensorRT engines from an export (a resolution folder, or a model folder: every resolution)."""
    from .trt.build import BuildOptions, build as build_engines, parse_batch

    options = BuildOptions(precision=precision, batch=parse_batch(batch), workspace_gb=workspace_gb,
                           timing_cache=Path(timing_cache) if timing_cache else None, opt_level=opt_level,
                           out_dir=Path(out_dir), tf32=tf32)
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
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int8cpu", "fp8"]), default=None,
              help="ONNX graph to run. Default: fp16 with a GPU provider (and an fp16 graph), else fp32. int8: the "
                   "CPU form (int8cpu) on CPU, the Q/DQ graph on a GPU provider.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write each label map as a PNG of class ids here.")
@click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write each photo with coloured classes and a legend here.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per backend call (default 8).")
@click.option("--server", default=None, help="Ask a Triton server (host:port) instead; then every argument is an "
              "image. See `beit-deploy serve`.")
@click.option("--model", "served_model", default=None, help="With --server: the served ensemble's name.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True,
              help="With --server: the endpoint's protocol.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse larger images (checked from the file header, before decoding); 0: no limit of ours.")
@click.option("--no-hash-check", is_flag=True,
              help="Check the graph's size but not its sha256 when opening (saves ~1.3 s per GB).")
@_friendly
def predict(path, images, top_k, precision, as_json, masks_dir, overlay_dir, batch_size, server, served_model,
            protocol, max_pixels, no_hash_check):
    """Run an export (resolution folder, ONNX file or TensorRT engine) on IMAGES (files or folders), or, with
    --server URL --model NAME, ask a Triton server about PATH and IMAGES."""
    from .core import tasks
    from .core.progress import say
    from .runtime.palette import output_name, save_mask, save_overlay
    from .runtime.preprocess import collect_images

    if server and not served_model:
        raise UsageError("--server needs --model NAME, the served ensemble (`beit-deploy serve` prints it)")
    if not server and not images:
        raise UsageError("give an export (PATH) and at least one image, or --server URL --model NAME with images")
    files = collect_images((path, *images) if server else images)
    failed, taken = 0, set()
    with _predictor(path, server, served_model, protocol, precision, batch_size, max_pixels,
                    not no_hash_check) as runner:
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


def _predictor(path, server, served_model, protocol, precision, batch_size, max_pixels, check_hashes):
    """The in-process runner of an export, or a client of a served ensemble: the same predict_each."""
    if server:
        from .runtime.triton_client import BeitTritonClient

        return BeitTritonClient(server, served_model, protocol=protocol)
    from .runtime.runner import BeitTRTRunner, pick_resolution

    folder = Path(path)
    return BeitTRTRunner(pick_resolution(folder, None) if folder.is_dir() else folder, precision=precision,
                         batch_size=batch_size, check_hashes=check_hashes, max_pixels=max_pixels)


# --- Triton: triton (repository), serve (server) -----------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default="model_repository", show_default=True, type=click.Path(file_okay=False),
              help="The model repository to write (replaced as a whole).")
@click.option("--name", default=None, help="Name of the served ensemble. Default: the export's model name.")
@click.option("--backend", type=click.Choice(["python", "onnxruntime", "tensorrt"]), default=None,
              help="Model stage. Default: tensorrt for an engine folder, python (ONNX Runtime in beit-deploy) for "
                   "an export.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="The ONNX graph of a python or onnxruntime stage.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch. Default: 8, or the engine profile's MAX.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per stage.")
@click.option("--instance-kind", type=click.Choice(["gpu", "cpu"]), default=None,
              help="Model stage instances. Default: gpu for tensorrt and onnxruntime, cpu for python.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long the dynamic batcher waits to fill a batch.")
@click.option("--preferred-batch", type=click.IntRange(min=1), multiple=True,
              help="Preferred batch size (repeat). Default: the engine profile's OPT and MAX.")
@click.option("--ort-tensorrt", is_flag=True, help="onnxruntime stage: TensorRT execution accelerator on GPUs.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes per image when a request does not say.")
@_friendly
def triton(paths, out_dir, name, backend, precision, max_batch, instances, instance_kind, max_queue_delay_us,
           preferred_batch, ort_tensorrt, top_k):
    """Write a Triton model repository for exports or engine folders (PATHS): an ensemble of preprocess, model
    and postprocess per resolution."""
    from .serve.repository import TritonOptions, write_repository

    options = TritonOptions(out=Path(out_dir), name=name, backend=backend, precision=precision,
                            max_batch=max_batch, instances=instances, instance_kind=instance_kind,
                            max_queue_delay_us=max_queue_delay_us, preferred_batch=tuple(preferred_batch),
                            ort_tensorrt=ort_tensorrt, top_k=top_k)
    for model in write_repository([Path(p) for p in paths], options):
        click.echo(f"{Path(out_dir) / model.name}: {model.task} ({model.backend} model stage)")
    click.echo(f"serve it: beit-deploy serve {out_dir}")


@main.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False))
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: a free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="0: a free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--startup-timeout", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the models to load.")
@_friendly
def serve(repository, http_port, grpc_port, metrics_port, host, startup_timeout):
    """Start Triton on a model repository (`beit-deploy triton`), until Ctrl-C or SIGTERM."""
    from .core.progress import say
    from .serve.server import ServerOptions, TritonServer, ensembles, serve_until_stopped

    server = TritonServer(Path(repository), ServerOptions(http_port, grpc_port, metrics_port, host, startup_timeout))
    say(f"starting {server.installation.binary} on {repository} (takes a while to load the models)...")

    def ready(s):
        say(f"server log: {s.log_path}")
        click.echo(f"Triton is serving {', '.join(ensembles(s.repository))}: HTTP {s.http_url}, gRPC {s.grpc_url}, "
                   f"metrics http://{s.http_url.rsplit(':', 1)[0]}:{s.metrics_port}/metrics")
        for model in ensembles(s.repository):
            click.echo(f"  try: beit-deploy predict --server {s.http_url} --model {model} samples/images")
        click.echo("Ctrl-C stops it.")

    serve_until_stopped(server, ready)
    say("server stopped")


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
@click.option("--engine", type=click.Path(exists=True), default=None,
              help="TensorRT engine (file or folder) to include. Default: the one `build` made from this export "
                   "under engines/<model>/<H>x<W>, if any.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON to this file.")
@_friendly
def verify(path, images, random_inputs, reference, engine, json_file):
    """Prove every artifact of an export answers like the eager model (exit 1 naming each failed check)."""
    from .core.errors import ParityError
    from .proof.verify import parity_report

    report = parity_report(Path(path), images=_verify_images(images), random=random_inputs, reference=reference,
                           engine=Path(engine) if engine else None)
    if json_file:
        Path(json_file).write_text(_json(report.to_dict(), indent=2) + "\n")
    click.echo(report.table())
    if not report.passed:
        raise ParityError("parity failed: " + "; ".join(str(f) for f in report.failures))


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--runners", default="onnxrt-fp32,onnxrt-fp16,torch,trt", show_default=True,
              help="Comma-separated: onnxrt-fp32, onnxrt-fp16, onnxrt-int8, onnxrt-fp8, onnxrt-int8cpu, torch, trt. "
                   "Each is compared with torch.")
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
@click.option("--engine", type=click.Path(exists=True), default=None,
              help="TensorRT engine (file or folder) for the trt runner. Default: the one `build` made from this "
                   "export under engines/<model>/<H>x<W>, else one Polygraphy builds from the ONNX.")
@_friendly
def compare(path, runners, images, random_inputs, atol, rtol, cosine, reference, save_inputs, save_outputs, engine):
    """Compare runners on an export with Polygraphy's Comparator; its PASSED/FAILED report, its exit status."""
    from .core.errors import ParityError
    from .proof.compare import CompareOptions, compare as run_compare

    options = CompareOptions(
        runners=tuple(r.strip() for r in runners.split(",") if r.strip()), images=_verify_images(images),
        random=random_inputs, atol=atol, rtol=rtol, cosine=cosine, reference=reference,
        save_inputs=Path(save_inputs) if save_inputs else None,
        save_outputs=Path(save_outputs) if save_outputs else None, engine=Path(engine) if engine else None)
    outcome = run_compare(Path(path), options)
    for name, reason in outcome.skipped.items():
        click.echo(f"skipped {name}: {reason}")
    if not outcome.passed:
        raise ParityError("comparison FAILED: " + ", ".join(outcome.failed()))
    click.echo("comparison PASSED: " + ", ".join(f"{a} vs {b}" for a, b, _ in outcome.pairs))
