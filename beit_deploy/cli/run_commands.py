"""`predict`: an export (or a served ensemble) on images."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..core.errors import UsageError
from ..core.jsontext import dumps as _json
from ..runtime.preprocess import DEFAULT_MAX_PIXELS
from .common import friendly, json_option, library_choice, option, precision_choice


@click.command()
@click.argument("path", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--precision", type=precision_choice(), default=None,
              help="ONNX graph to run. Default: fp16 with a GPU provider (and an fp16 graph), else fp32. int8: the "
                   "CPU form (int8cpu) on CPU, the Q/DQ graph on a GPU provider.")
@json_option("One JSON object per image on stdout.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write each label map as a PNG of class ids here.")
@click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write each photo with coloured classes and a legend here.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per backend call (default 8).")
@click.option("--server", default=None, help="Ask a Triton server (host[:port]) instead; then every argument is an "
              "image. Default port: 8000 for http, 8001 for grpc. See `beit-deploy serve`.")
@option("--served-model", "served_model", aliases=("--model",), default=None,
        help="With --server: the served ensemble's name (`beit-deploy serve` prints it).")
@click.option("--protocol", type=library_choice("runtime.triton_client", "PROTOCOLS"), default="http",
              show_default=True,
              help="With --server: the endpoint's protocol.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse larger images (checked from the file header, before decoding); 0: no limit of ours.")
@click.option("--no-hash-check", is_flag=True,
              help="Check the graph's size but not its sha256 when opening (saves ~1.3 s per GB).")
@friendly
def predict(path, images, top_k, precision, as_json, masks_dir, overlay_dir, batch_size, server, served_model,
            protocol, max_pixels, no_hash_check):
    """Run an export (resolution folder, ONNX file or TensorRT engine) on IMAGES (files, or folders with their
    subfolders), or, with --server URL --served-model NAME, ask a Triton server about PATH and IMAGES. For data
    sets, results files and resuming: `beit-deploy batch`."""
    from ..core.progress import bars_on, outside_bars, say, tracked
    from ..runtime import answers
    from ..runtime.palette import output_name
    from ..runtime.preprocess import ImageError

    if server and not served_model:
        raise UsageError("--server needs --served-model NAME, the served ensemble (`beit-deploy serve` prints it)")
    if not server and not images:
        raise UsageError("give an export (PATH) and at least one image, or --server URL --served-model NAME with "
                         "images")
    files = _images((path, *images) if server else images)
    failed, unread, unwritten, taken, start = 0, 0, 0, set(), time.perf_counter()
    with _predictor(path, server, served_model, protocol, precision, batch_size, max_pixels,
                    not no_hash_check) as runner:
        if (masks_dir or overlay_dir) and not answers.of(runner.task).label_map:
            raise UsageError(f"--masks/--overlay need a segmentation model; this one does {runner.task}")
        predictions = runner.predict_each(files, top_k, keep_rgb=bool(overlay_dir))
        for n, p in enumerate(tracked(predictions, "predicting", total=len(files), unit="img"), 1):
            if len(files) >= 10 and not bars_on():  # a log gets a line per image, a terminal the bar
                say(f"[{n}/{len(files)}] {p.image}")
            if p.error is not None:
                with outside_bars():
                    click.echo(f"error: {p.error}", err=True)
                    if as_json:
                        click.echo(_json({"image": p.image, "error": str(p.error)}))
                failed += 1
                unread += isinstance(p.error, ImageError)
                continue
            with outside_bars():  # a result on the terminal goes above the bar, not through it
                click.echo(_json({"image": p.image, **p.result.to_dict()}) if as_json
                           else f"{p.image}\n{p.result.summary()}")
            if masks_dir or overlay_dir:
                unwritten += _save_outputs(p, output_name(p.image, taken), masks_dir, overlay_dir, runner.labels)
            del p  # one full-size label map at a time: this one goes before the next is made
    seconds = time.perf_counter() - start
    say(f"{len(files)} images, {len(files) - failed} answered, {failed} failed, "
        f"{len(files) / seconds if seconds > 0 else 0:.2f} images/s")
    if failed:
        what = "could not be read" if unread == failed else "got no answer (see above)"
        click.echo(f"error: {failed} of {len(files)} images {what}", err=True)
    if unwritten:
        click.echo(f"error: {unwritten} mask/overlay file(s) were not written (see above)", err=True)
    if failed or unwritten:
        sys.exit(1)


def _save_outputs(p, name: str, masks_dir, overlay_dir, labels) -> int:
    """Write one image's mask and/or overlay; a refusal (an existing file that is not an earlier output of the
    same kind) is said on its own line. -> how many were not written."""
    from ..core.errors import BeitDeployError
    from ..runtime.palette import save_mask, save_overlay

    writes = ([lambda: save_mask(p.result.label_map, Path(masks_dir) / name)] if masks_dir else []) + \
        ([lambda: save_overlay(p.rgb, p.result.label_map, labels, Path(overlay_dir) / name)] if overlay_dir else [])
    missed = 0
    for write in writes:
        try:
            write()
        except BeitDeployError as exc:
            click.echo(f"error: {exc}", err=True)
            missed += 1
    return missed


def _images(paths) -> list[Path]:
    """Files as given; folders as every file named like an image in them and their subfolders, sorted. A
    missing path or a folder without images is a UsageError; unreadable files are each one image's error."""
    from ..batch.inputs import images_below

    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"'{path}' does not exist: check the image path")
        found += map(Path, images_below(path)) if path.is_dir() else [path]
    return found


def _predictor(path, server, served_model, protocol, precision, batch_size, max_pixels, check_hashes):
    """The in-process runner of an export, or a client of a served ensemble: the same predict_each."""
    if server:
        from ..runtime.triton_client import BeitTritonClient

        return BeitTritonClient(server, served_model, protocol=protocol)
    from ..runtime.runner import BeitRunner, pick_resolution

    folder = Path(path)
    return BeitRunner(pick_resolution(folder, None) if folder.is_dir() else folder, precision=precision,
                         batch_size=batch_size, check_hashes=check_hashes, max_pixels=max_pixels)
