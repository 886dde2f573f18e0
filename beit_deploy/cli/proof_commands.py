"""`verify` and `compare`: parity of an export against the eager model."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..core.jsontext import dumps as _json
from ..core.backends import compare_runners
from .common import friendly, images_option, json_option, option, write_report


def _verify_images(images):
    """--images given once as a folder -> that folder; several files -> the list; none -> None (sample photos)."""
    if not images:
        return None
    return images[0] if len(images) == 1 and Path(images[0]).is_dir() else list(images)


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@images_option("A folder of photos, or photo files (repeat). Default: samples/images.", many=True)
@option("--random-inputs", "random_inputs", aliases=("--random",), default=2, show_default=True,
        type=click.IntRange(0, 64), help="Random inputs besides the photos (0 to 64).")
@click.option("--reference", default=None,
              help="Model to compare with instead of the manifest's source (folder, short name or hub id).")
@click.option("--allow-download", is_flag=True,
              help="Let the manifest's source model come from the Hugging Face Hub when it is not in the local "
                   "cache. Default: offline (a manifest never makes verify reach for the network).")
@click.option("--engine", type=click.Path(exists=True), default=None,
              help="TensorRT engine (file or folder) to include. Default: the one `build` made from this export "
                   "under engines/<model>/<H>x<W>, if any.")
@json_option("Print the report as JSON instead of a table.", report=True)
@friendly
def verify(path, images, random_inputs, reference, allow_download, engine, as_json, report_file):
    """Prove every artifact of an export answers like the eager model (exit 1 naming each failed check)."""
    from ..core.errors import ParityError
    from ..proof.verify import parity_report

    report = parity_report(Path(path), images=_verify_images(images), random=random_inputs, reference=reference,
                           engine=Path(engine) if engine else None, allow_download=allow_download)
    if report_file:
        write_report(report_file, _json(report.to_dict(), indent=2) + "\n")
    click.echo(_json(report.to_dict(), indent=2) if as_json else report.table())
    if not report.passed:
        raise ParityError("parity failed: " + "; ".join(str(f) for f in report.failures))
    if report.unreadable:
        from ..runtime.preprocess import ImageError

        raise ImageError(f"{len(report.unreadable)} of {len(report.unreadable) + report.photos} photos could not "
                         f"be read and were left out of the check (parity held on the rest): "
                         f"{report.unreadable[0]}")


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--runners", default="onnxrt-fp32,onnxrt-fp16,torch,trt", show_default=True,
              help=f"Comma-separated: {', '.join(compare_runners())}. Each is compared with torch.")
@images_option("A folder of photos, or photo files (repeat). Default: samples/images.", many=True)
@option("--random-inputs", "random_inputs", aliases=("--random",), default=2, show_default=True,
        help="Random inputs besides the photos.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. Default: per precision.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance. Default: per precision.")
@click.option("--cosine", type=float, default=None, help="Minimum cosine similarity. Default: per precision.")
@click.option("--reference", default=None, help="Model for the torch runner instead of the manifest's source.")
@click.option("--allow-download", is_flag=True,
              help="Let the manifest's source model come from the Hugging Face Hub when it is not in the local "
                   "cache. Default: offline.")
@click.option("--save-inputs", type=click.Path(dir_okay=False), default=None, help="Polygraphy JSON of the feeds.")
@click.option("--save-outputs", type=click.Path(dir_okay=False), default=None,
              help="Polygraphy RunResults JSON of every runner's outputs.")
@click.option("--engine", type=click.Path(exists=True), default=None,
              help="TensorRT engine (file or folder) for the trt runner. Default: the one `build` made from this "
                   "export under engines/<model>/<H>x<W>, else one Polygraphy builds from the ONNX.")
@json_option("Print the verdict as JSON (pairs, skipped runners) instead of text.")
@friendly
def compare(path, runners, images, random_inputs, atol, rtol, cosine, reference, allow_download, save_inputs,
            save_outputs, engine, as_json):
    """Compare runners on an export with Polygraphy's Comparator; its PASSED/FAILED report, its exit status."""
    from ..core.errors import ParityError
    from ..proof.compare import CompareOptions, compare as run_compare

    options = CompareOptions(
        runners=tuple(r.strip() for r in runners.split(",") if r.strip()), images=_verify_images(images),
        random=random_inputs, atol=atol, rtol=rtol, cosine=cosine, reference=reference,
        allow_download=allow_download, save_inputs=Path(save_inputs) if save_inputs else None,
        save_outputs=Path(save_outputs) if save_outputs else None, engine=Path(engine) if engine else None)
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = run_compare(Path(path), options)  # Polygraphy prints its FAILED lines: stdout stays JSON
    if as_json:
        click.echo(_json(outcome.to_dict(), indent=2))
    for name, reason in ({} if as_json else outcome.skipped).items():
        click.echo(f"skipped {name}: {reason}")
    if not outcome.passed:
        raise ParityError("comparison FAILED: " + ", ".join(outcome.failed())
                          + " (-v shows Polygraphy's figures for every output and iteration)")
    if not as_json:
        click.echo("comparison PASSED: " + ", ".join(f"{a} vs {b}" for a, b, _ in outcome.pairs))
