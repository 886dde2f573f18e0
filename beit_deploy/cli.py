"""`beit-deploy`: a thin click layer over the library. Errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from .errors import BeitDeployError


def _friendly(command):
    """Run a command; turn BeitDeployError (and anything unexpected) into one line and an exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BeitDeployError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback on request
            if os.environ.get("BEIT_DEPLOY_DEBUG"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                       "(set BEIT_DEPLOY_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(70)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="beit-deploy")
def main():
    """Export BEiT models to ONNX and TensorRT, run them, and prove they answer like the original."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@_friendly
def models(as_json):
    """List the registered microsoft/beit-* checkpoints."""
    from .registry import CHECKPOINTS

    rows = [{"name": c.name, "task": c.task, "resolution": c.resolution, "size": c.size, "labels": c.num_labels,
             "hub_id": c.hub_id} for c in CHECKPOINTS.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
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
    from .export import ExportOptions, export as run_export, parse_resolution
    from .loading import ModelSpec

    options = ExportOptions(resolutions=tuple(parse_resolution(r) for r in resolutions), fp16=fp16,
                            out_dir=Path(out_dir), bias_mode=bias_mode, images=Path(images) if images else None)
    for result in run_export(ModelSpec(model, random_weights, seed), options):
        m = result.manifest
        click.echo(f"{result.folder}: {m.task}, {m.resolution[0]}x{m.resolution[1]}, weights {m.weights['kind']}")
        for precision, figures in m.parity.items():
            worst = max(figures["outputs"], key=lambda o: o["rel"])
            top1 = f", top-1 {worst['top1']:.0%}" if worst.get("top1") is not None else ""
            click.echo(f"  {precision}: {m.artifacts[precision]} ({m.graph[precision]['nodes']} nodes), "
                       f"max rel err {worst['rel']:.1e}, min cosine {worst['cosine']:.6f}{top1}: passed")
    if fp16:
        click.echo("TensorRT engines: skipped (engine building is not part of this version); "
                   "the fp16 graph is ready for `trtexec --onnx=... --stronglyTyped`")
