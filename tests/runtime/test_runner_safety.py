"""The runner on hostile or odd input: decompression bombs (memory measured in a subprocess), images that are
not files, empty or lazily broken images, bad arguments, use after close."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beit_deploy import BeitTRTRunner
from beit_deploy.core.errors import UsageError
from beit_deploy.exporter.parity import sample_images
from beit_deploy.runtime.preprocess import ImageError, collect_images

PHOTOS = sample_images()


def bomb_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A 1-bit greyscale PNG of zeros: 18 KB on disk, width x height pixels (0.6 GB as RGB) decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, packer = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


PEAK = """
import resource, sys
from beit_deploy import BeitTRTRunner
folder, limit, photo, *images = sys.argv[1:]
with BeitTRTRunner(folder, **({} if limit == "default" else {"max_pixels": int(limit)})) as runner:
    runner.predict(photo)  # everything loaded and warm: what follows is the images' own memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    errors = [str(p.error) for p in runner.predict_each(images) if p.error is not None]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown // 1024, len(errors), errors[0] if errors else "")
"""


def peak_growth(folder, limit: int | str, images: list[Path]) -> tuple[int, int, str]:
    """(MB the peak RSS grew by while predicting `images`, number of errors, first error) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(folder), str(limit), str(PHOTOS[0]), *map(str, images)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown, errors, first = out.stdout.strip().split(" ", 2) + [""] * (3 - len(out.stdout.strip().split(" ", 2)))
    return int(grown), int(errors), first


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    return [bomb_png(folder / f"bomb{k}.png") for k in range(4)]


def test_bombs_are_refused_from_their_header(tiny_export, bombs):
    """Before: four 18 KB PNGs of 12000x12000 took 2.7 GB in one batch. Now each is refused undecoded."""
    grown, errors, first = peak_growth(tiny_export("classification"), "default", bombs)
    assert errors == 4 and "12000x12000 = 144.0 megapixels, above the limit of 64 megapixels" in first
    assert grown < 100, f"peak RSS grew by {grown} MB"


def test_a_batch_holds_no_full_size_copies(tiny_export, bombs):
    """Allowed by a raised limit, the same four bombs cost one image's decoding at a time (about 0.7 GB: the
    1-bit image and its RGB copy), not four."""
    grown, errors, _ = peak_growth(tiny_export("classification"), 150_000_000, bombs)
    assert errors == 0
    assert grown < 1200, f"peak RSS grew by {grown} MB"


def test_pixel_limit_is_per_image_and_configurable(tiny_export):
    small = np.zeros((10, 20, 3), np.uint8)
    with BeitTRTRunner(tiny_export("classification"), max_pixels=150) as runner:
        out = list(runner.predict_each([small, PHOTOS[0], Image.open(PHOTOS[1]), small[:5, :5]]))
        assert [p.error is None for p in out] == [False, False, False, True]
        assert "above the limit of 0.00015 megapixels" in str(out[1].error)
    with pytest.raises(UsageError, match="max_pixels"):
        BeitTRTRunner(tiny_export("classification"), max_pixels=-1)
    with BeitTRTRunner(tiny_export("classification"), max_pixels=None) as runner:
        assert runner.predict(PHOTOS[0]).top_k


def test_empty_and_lazily_broken_images(tiny_export, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(PHOTOS[-1].read_bytes()[:3000])
    lazy = Image.open(truncated)  # opens fine (header only); decoding fails later
    with BeitTRTRunner(tiny_export("classification")) as runner:
        out = list(runner.predict_each([np.zeros((0, 0, 3), np.uint8), lazy, PHOTOS[0], np.zeros((4, 0), np.uint8)]))
        assert [p.error is None for p in out] == [False, False, True, False]
        assert "empty (0x0 pixels)" in str(out[0].error) and "empty (4x0 pixels)" in str(out[3].error)
        assert isinstance(out[1].error, ImageError) and "truncated.jpg" in str(out[1].error)
        with pytest.raises(ImageError, match="empty"):
            runner.predict(np.zeros((0, 0, 3), np.uint8))


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_must_be_positive(tiny_export, top_k):
    with BeitTRTRunner(tiny_export("classification")) as runner:
        with pytest.raises(UsageError, match="top_k must be a positive"):
            runner.predict(PHOTOS[0], top_k=top_k)


def test_use_after_close(tiny_export):
    runner = BeitTRTRunner(tiny_export("classification"))
    runner.close()
    runner.close()  # twice is fine
    for call in (lambda: runner.predict(PHOTOS[0]), lambda: runner.run(np.zeros((1, 3, 64, 64), np.float32))):
        with pytest.raises(UsageError, match="runner .* is closed: open a new BeitTRTRunner"):
            call()


def test_fifo_and_looping_symlinks_are_reported_not_waited_on(tiny_export, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "broken.png").symlink_to(folder / "nowhere.png")
    (folder / "folder.jpg").mkdir()
    (folder / "good.png").write_bytes(PHOTOS[0].read_bytes())
    files = collect_images([folder])
    assert [f.name for f in files] == ["broken.png", "folder.jpg", "good.png", "loop.png", "pipe.jpg"]
    out = []
    worker = threading.Thread(target=lambda: out.extend(BeitTRTRunner(tiny_export("classification"))
                                                        .predict_each(files)))
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # blocked opening the FIFO: give it a writer so the thread can end, then fail
        os.close(os.open(folder / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
        pytest.fail("predict waited on a FIFO")
    errors = {Path(p.image).name: str(p.error) for p in out if p.error is not None}
    assert set(errors) == {"broken.png", "folder.jpg", "loop.png", "pipe.jpg"}
    assert "leads nowhere (broken or looping)" in errors["loop.png"] and "not a regular file" in errors["pipe.jpg"]


def test_encoded_bytes_get_the_same_limit(tiny_export, bombs):
    """Bytes off the network (a server's requests) are where a bomb costs most: refused from the header too."""
    with BeitTRTRunner(tiny_export("classification")) as runner:
        bomb, photo = bombs[0].read_bytes(), PHOTOS[0].read_bytes()
        out = list(runner.predict_each([bomb, photo, b"not an image"]))
        assert [p.error is None for p in out] == [False, True, False]
        assert "<image bytes>' is 12000x12000" in str(out[0].error) and "not a readable image" in str(out[2].error)
        np.testing.assert_allclose(runner.preprocess(photo), runner.preprocess(PHOTOS[0]), atol=0)
