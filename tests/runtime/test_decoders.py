"""Every decoder failure is the image's own: crafted files of every format Pillow reads give that image's
ImageError (never another exception type), in the runner, the CLI and a seeded fuzz run; containers are checked
against the pixel limit before anything in them is decoded."""

from __future__ import annotations

import io
import json
import random
import time
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile

from beit_deploy import BeitTRTRunner
from beit_deploy.cli import main
from beit_deploy.exporter.parity import sample_images
from beit_deploy.runtime.preprocess import ImageError, load_image, prepare

from crafted_images import CRAFTED, ico_with_png

PHOTOS = sample_images()
FUZZ_SECONDS = 4.0
# Every format this Pillow writes and reads back, in the modes it takes (some write only some modes).
MODES = ("RGB", "L", "1", "RGBA", "P", "F")


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_file_is_its_own_error(name, tmp_path):
    data = CRAFTED[name]()
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(data)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageError, match=name):
        load_image(tmp_path / name)


def test_runner_answers_the_good_images_of_the_batch(tiny_export, tmp_path):
    bad = [tmp_path / name for name in sorted(CRAFTED)]
    for path in bad:
        path.write_bytes(CRAFTED[path.name]())
    with BeitTRTRunner(tiny_export("classification"), batch_size=4) as runner:
        got = list(runner.predict_each([PHOTOS[0], bad[0], PHOTOS[1], bad[1]]))
        assert [p.error is None for p in got] == [True, False, True, False]
        assert all(isinstance(p.error, ImageError) for p in got if p.error is not None)
        with pytest.raises(ImageError):
            runner.predict(bad[0])


def test_cli_says_which_images_and_answers_the_rest(tiny_export, tmp_path):
    for name in CRAFTED:
        (tmp_path / name).write_bytes(CRAFTED[name]())
    result = CliRunner().invoke(main, ["predict", str(tiny_export("classification")), str(PHOTOS[0]),
                                       *(str(tmp_path / n) for n in sorted(CRAFTED)), "--json"])
    assert result.exit_code == 1 and "internal error" not in result.stderr, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [("error" in row) for row in rows] == [False, True, True]
    assert "2 of 3 images could not be read" in result.stderr
    assert all(name in result.stderr for name in CRAFTED)


def test_ico_is_checked_before_its_png_is_decoded(monkeypatch, tmp_path):
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.format) or real_load(self))
    data = ico_with_png(2000)  # the directory says 256x256; the PNG inside is 4 megapixels
    (tmp_path / "big.ico").write_bytes(data)
    for source in (data, tmp_path / "big.ico"):
        with pytest.raises(ImageError, match="2000x2000"):
            load_image(source, max_pixels=1_000_000)
    assert decoded == []  # refused from the headers: Pillow never decoded the PNG
    assert load_image(ico_with_png(300), max_pixels=1_000_000).size == (300, 300)


def _seeds() -> list[tuple[str, bytes]]:
    """One small file per (format, mode) this Pillow can write: the fuzzer's starting points."""
    Image.init()
    array = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    seeds = []
    for fmt in sorted(set(Image.SAVE) & set(Image.OPEN) | {"JPEG", "MPO", "DIB"}):
        for mode in MODES:
            buffer = io.BytesIO()
            try:
                Image.fromarray(array).convert(mode).save(buffer, format=fmt)
            except Exception:  # noqa: BLE001 - this format does not take this mode (or needs a missing library)
                continue
            seeds.append((fmt, buffer.getvalue()))
    return seeds


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at, kind = rng.randrange(max(len(out), 1)), rng.randrange(4)
        if kind == 0 and out:
            out[at] = rng.randrange(256)
        elif kind == 1:
            out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff", b"\x80\0\0\0"])
        elif kind == 2 and len(out) > 2:
            del out[max(at, 1):]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def test_fuzz_every_format_gives_an_image_or_its_image_error():
    """Seeded mutations of files in every format Pillow writes here, for a few seconds: each one decodes or
    raises ImageError; any other exception is a failure, reported with its format and the seed to replay it."""
    seeds, rng, escaped, tries = _seeds(), random.Random(17), [], 0
    assert len({fmt for fmt, _ in seeds}) >= 15, [fmt for fmt, _ in seeds]
    p_deadline = time.monotonic() + FUZZ_SECONDS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF, truncated tags...
        while time.monotonic() < p_deadline:
            fmt, data = rng.choice(seeds)
            mutated = _mutate(data, rng)
            tries += 1
            try:
                prepare(mutated, _PREPROCESSING, max_pixels=1_000_000)
            except ImageError:
                pass
            except Exception as exc:  # noqa: BLE001 - the finding
                escaped.append(f"{fmt} try {tries}: {type(exc).__name__}: {exc}")
    assert not escaped, escaped[:10]
    assert tries > 100


def _preprocessing():
    from beit_deploy.core.manifest import Preprocessing

    return Preprocessing(size=(16, 16), resample=2)


_PREPROCESSING = _preprocessing()


def test_eps_never_reaches_ghostscript(monkeypatch):
    """An EPS "image" would have Pillow run Ghostscript (a PostScript interpreter) on the file's content."""
    from PIL import EpsImagePlugin

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "EPS")
    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or 1 / 0)
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(buffer.getvalue())
    assert opened == []
