"""`models`, `export` and `bench`: the registry, the export stage and the benchmark."""

from __future__ import annotations

from pathlib import Path

import click

from ..bench import report as bench_rows
from ..core import precisions
from ..core.errors import UsageError
from ..core.jsontext import dumps as _json
from ..core.manifest import ATTENTION_FORMS, BIAS_MODES, DECOMPOSED
from .common import friendly, images_option, json_option, library_choice, option, precision_choice, \
    precision_flags, write_report


@click.command()
@json_option("Print the registry as JSON.")
@friendly
def models(as_json):
    """List the registered microsoft/beit-* checkpoints."""
    from ..core.registry import CHECKPOINTS

    rows = [{"name": c.name, "task": c.task, "resolution": c.resolution, "size": c.size, "labels": c.num_labels,
             "hub_id": c.hub_id} for c in CHECKPOINTS.values()]
    if as_json:
        click.echo(_json(rows, indent=2))
        return
    click.echo(f"{'name':36} {'task':22} {'res':>4} {'size':6} {'labels':>6}")
    for r in rows:
        click.echo(f"{r['name']:36} {r['task']:22} {r['resolution']:>4} {r['size']:6} {r['labels']:>6}")


@click.command()
@click.option("--model", "-m", required=True,
              help="Registered short name (see `models`), hub id (org/name) or local save_pretrained folder.")
@click.option("--resolution", "-r", "resolutions", multiple=True,
              help="N or HxW, multiples of the patch size; repeat for several. Default: the model's native one.")
@click.option("--random-weights", is_flag=True, help="Seeded random weights instead of pretrained ones.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed for --random-weights.")
@click.option("--revision", default=None,
              help="Hub branch, tag or commit of the weights (from_pretrained's revision). Default: main.")
@click.option("--out", "out_dir", default="export", show_default=True, type=click.Path(file_okay=False),
              help="Artifact folder; results go to OUT/<model>/<H>x<W>/.")
@click.option("--replace", is_flag=True,
              help="Replace the earlier export in OUT/<model>/<H>x<W>/ whole; needed when it has other weights "
                   "or another graph form. Without it, an export of the same weights and form is added to: its "
                   "other graphs are kept.")
@click.option("--bias-mode", type=click.Choice(BIAS_MODES), default=None,
              help="How the relative position bias is stored. Default: chosen by size.")
@click.option("--attention", type=click.Choice(ATTENTION_FORMS), default=DECOMPOSED, show_default=True,
              help="Attention as MatMul/Add/Softmax/MatMul ops (every TensorRT 10.x), or as one ONNX Attention op "
                   "per layer (opset 23; TensorRT 10.14+).")
@images_option("Folder of photos for the parity check. Default: samples/images.")
@precision_flags
@click.option("--calibration", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of photos to calibrate --int8/--fp8 on (64+ advised). Default: the parity photos.")
@click.option("--int8-method", type=library_choice("exporter.quantize", "METHODS"), default="max", show_default=True,
              help="Activation calibration of the Q/DQ graphs.")
@click.option("--quantizer", type=library_choice("exporter.quantize", "TOOLS"), default="auto",
              show_default=True, help="Q/DQ tool. auto: ModelOpt when installed, else ONNX Runtime (int8 only).")
@json_option("Print what was written (folders, graphs, parity figures, engines) as JSON instead of text.")
@friendly
def export(model, resolutions, random_weights, seed, revision, out_dir, replace, bias_mode, attention, images,
           calibration, int8_method, quantizer, as_json, **flags):
    """Export a BEiT model to ONNX, one validated graph per resolution."""
    from ..exporter.loading import ModelSpec
    from ..exporter.pipeline import export_each, export_options, parse_resolution

    wanted = [p.name for p in precisions.PRECISIONS.values() if p.option and flags.get(p.option)]
    options = export_options(wanted, resolutions=tuple(parse_resolution(r) for r in resolutions),
                             out_dir=Path(out_dir), bias_mode=bias_mode, attention=attention,
                             images=Path(images) if images else None,
                             calibration=Path(calibration) if calibration else None,
                             quantize={"method": int8_method, "tool": quantizer}, replace=replace)
    spec = ModelSpec(model, random_weights, seed, revision)
    written = []
    for result in export_each(spec, options):  # each said as soon as written
        written.append(_export_record(result))
        if not as_json:
            _echo_export(result)
    engines = _engines_after_export(result.folder if len(resolutions) <= 1 else result.folder.parent,
                                    options.precisions, as_json)
    if as_json:
        click.echo(_json({"exports": written, "engines": engines}, indent=2))


def _export_record(result) -> dict:
    """What `export --json` says of one resolution folder: where, what, and each graph's parity verdict."""
    m = result.manifest
    return {"folder": str(result.folder), "model": m.model, "task": m.task,
            "resolution": list(m.resolution), "weights": m.weights.get("kind"),
            "manifest": str(result.folder / "manifest.json"),
            "graphs": {p: {"file": m.artifacts[p], "nodes": m.graph[p]["nodes"], "parity": m.parity[p],
                           "quantization": m.quantization.get(p)} for p in m.parity}}


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
                   + _how_quantized(m.quantization.get(precision))
                   + (" (kept from an earlier export)" if precision in result.kept else ""))


@click.command()
@click.argument("export_folder", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--model", "-m", default=None,
              help="Registered short name, hub id or local save_pretrained folder (instead of EXPORT_FOLDER).")
@click.option("--random-weights", is_flag=True, help="Seeded random weights instead of pretrained ones.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-weights.")
@click.option("--resolution", "-r", default=None, help="N or HxW. Default: the model's native one.")
@click.option("--backends", default=None,
              help=f"Comma-separated: {', '.join(bench_rows.BACKENDS)}. onnxruntime-<x>: the export's graph of that "
                   "precision (onnxruntime-int8: the CPU form, -int8-qdq: the Q/DQ graph). eager is always measured. "
                   f"Default: {','.join(bench_rows.DEFAULT_BACKENDS)}; on an EXPORT_FOLDER, eager and every graph "
                   "the folder has.")
@option("--batch-size", "batch_sizes", aliases=("--batch-sizes",), default="1,4,16,32", show_default=True,
        help="Batch sizes to measure, comma-separated.")
@click.option("--device", type=library_choice("bench.run", "DEVICES"), default="cpu", show_default=True)
@option("--precision", "dtype", aliases=("--dtype",), type=precision_choice(making=precisions.FLOAT),
        default=precisions.REFERENCE, show_default=True,
        help="Precision of the torch backends (and of the TensorRT graph).")
@click.option("--iters", default=10, show_default=True, help="Timed iterations per backend and batch size.")
@click.option("--warmup", default=2, show_default=True, help="Untimed iterations first.")
@click.option("--no-end-to-end", is_flag=True, help="Skip the end-to-end predict() row on the sample photos.")
@images_option("Photos for the end-to-end row and the export's parity check. Default: samples/images.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Where exports for benchmarking are kept. Default: ~/.cache/beit-deploy/bench.")
@json_option("Print the results as JSON instead of markdown.", report=True)
@click.option("--markdown", "markdown_file", type=click.Path(dir_okay=False), default=None,
              help="Write the tables as markdown.")
@friendly
def bench(export_folder, model, random_weights, seed, resolution, backends, batch_sizes, device, dtype, iters, warmup,
          no_end_to_end, images, cache_dir, as_json, report_file, markdown_file):
    """Benchmark eager and SDPA transformers against the exported graphs; print markdown tables.

    EXPORT_FOLDER (a resolution folder, e.g. export/beit-base-patch16-224/224x224) measures that export's
    graphs, hash-checked, against the model it was exported from; otherwise --model is exported into the
    bench's cache (reused while its graphs match their manifest)."""
    from ..bench.report import DEFAULT_BACKENDS, BenchSettings, default_cache, to_markdown
    from ..bench.run import run_bench
    from ..exporter.loading import ModelSpec
    from ..exporter.pipeline import parse_resolution

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--batch-size '{batch_sizes}' is not a comma-separated list of integers") from None
    if (export_folder is None) == (model is None):
        raise UsageError("bench measures either an export folder (beit-deploy bench export/<model>/<H>x<W>) or a "
                         "model (--model NAME): pass one of them")
    if export_folder:
        from ..core.manifest import resolution_folders

        found = resolution_folders(Path(export_folder))  # a resolution folder, or a model folder with one
        if len(found) != 1:
            raise UsageError(f"'{export_folder}' holds {len(found)} resolutions ({', '.join(found)}): pass one "
                             f"of them, e.g. {next(iter(found.values()))}")
        export_folder = next(iter(found.values()))
        if random_weights:
            raise UsageError("--random-weights is for --model; an export folder's manifest says its weights")
    chosen = tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None
    settings = BenchSettings(
        spec=ModelSpec(model or "", random_weights, seed),
        resolution=parse_resolution(resolution) if resolution else None,
        backends=chosen if chosen or export_folder else DEFAULT_BACKENDS, batch_sizes=sizes, device=device,
        dtype=dtype, iters=iters, warmup=warmup, end_to_end=not no_end_to_end,
        cache_dir=Path(cache_dir) if cache_dir else default_cache(), images=Path(images) if images else None,
        export=Path(export_folder) if export_folder else None)
    report = run_bench(settings)
    markdown = to_markdown(report)
    if report_file:
        write_report(report_file, _json(report.to_dict(), indent=2) + "\n")
    if markdown_file:
        write_report(markdown_file, markdown)
    click.echo(_json(report.to_dict(), indent=2) if as_json else markdown)


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


def _engines_after_export(folder: Path, written: tuple[str, ...], quiet: bool = False) -> dict:
    """Build engines for a fresh export where TensorRT and a GPU are present; else say how to build them later.
    Returns the same as a record for `--json` (quiet: nothing echoed)."""
    from ..core.engine_manifest import unavailable_reason
    from ..trt.build import BuildOptions, build as build_engines

    reason = unavailable_reason()
    if reason:
        if not quiet:
            click.echo(f"TensorRT engines: skipped ({reason}); build them later on a GPU machine with "
                       f"`beit-deploy build {folder}`")
        return {"built": [], "skipped": reason, "build_later": f"beit-deploy build {folder}"}
    precision = precisions.ENGINE_DEFAULT if precisions.ENGINE_DEFAULT in written else precisions.REFERENCE
    built = []
    for engine in build_engines(folder, BuildOptions(precision=precision)):
        built.append(str(engine))
        if not quiet:
            click.echo(f"TensorRT engine: {engine}")
    return {"built": built, "skipped": None}
