"""`build` and `inspect`: TensorRT engines from an export, and what a graph or engine holds."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.jsontext import dumps as _json
from ..core import precisions
from .common import friendly, json_option, option, precision_choice


@click.command()
@click.argument("export_path", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", type=precision_choice(tensorrt=True), default=precisions.ENGINE_DEFAULT, show_default=True,
              help="Which exported graph to build: mixed-precision fp16, fp32, or the int8/fp8 Q/DQ graph.")
@option("--batch-profile", "batch", aliases=("--batch",), default="1:8:32", show_default=True,
        help="Batch sizes MIN:OPT:MAX of the engine's optimisation profile (or N: N:N:N).")
@click.option("--workspace", "workspace_gb", type=float, default=None, help="Builder workspace in GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file, reused and merged across builds (file-locked). "
                   "Default: OUT/timing-<TensorRT version>-<GPU>.cache.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level (0-5).")
@click.option("--tf32", is_flag=True, help="Allow TF32 for fp32 layers (off by default: fp32 stays fp32).")
@click.option("--out", "out_dir", default="engines", show_default=True, type=click.Path(file_okay=False),
              help="Engines go to OUT/<model>/<H>x<W>/.")
@json_option("Print the engines built as a JSON list instead of one path a line.")
@friendly
def build(export_path, precision, batch, workspace_gb, timing_cache, opt_level, tf32, out_dir, as_json):
    """Build TensorRT engines from an export (a resolution folder, or a model folder: every resolution)."""
    from ..trt.build import BuildOptions, build as build_engines, parse_batch

    options = BuildOptions(precision=precision, batch=parse_batch(batch), workspace_gb=workspace_gb,
                           timing_cache=Path(timing_cache) if timing_cache else None, opt_level=opt_level,
                           out_dir=Path(out_dir), tf32=tf32)
    engines = []
    for engine in build_engines(Path(export_path), options):
        engines.append(str(engine))
        if not as_json:
            click.echo(str(engine))
    if as_json:
        click.echo(_json(engines, indent=2))


@click.command()
@click.argument("path", type=click.Path(exists=True))
@json_option("Print the report as JSON.")
@friendly
def inspect(path, as_json):
    """Inputs, outputs and make-up of an ONNX graph (anywhere) or a TensorRT engine (on its GPU)."""
    from ..trt.inspect import format_report, inspect_path

    report = inspect_path(Path(path))
    click.echo(_json(report, indent=2) if as_json else format_report(report))
