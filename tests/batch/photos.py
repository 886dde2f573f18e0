"""A photo tree for batch jobs: the sample photos in nested folders, beside corrupt and crafted files. Import
`photo_tree` into a test module to use the fixture."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SAMPLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "samples" / "images").iterdir()
                 if p.suffix in (".png", ".jpg"))
# file name in the tree -> what must happen to it ("ok": a result, else a word of its error row)
EXPECTED = {"exif-rotated.jpg": "ok", "gray16.png": "ok", "truncated.jpg": "readable", "text.jpg": "readable",
            "empty.png": "readable", "bomb.png": "megapixels", "pipe.jpg": "regular file",
            "folder.jpg": "regular file", "broken-link.png": "symbolic link"}


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 greyscale PNG whose header says width x height: refused from the header, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + \
        chunk(b"IEND", b"")


def make_tree(root: Path) -> Path:
    """root/photos: samples at the top and two levels down, and the crafted files of EXPECTED."""
    top = root / "photos"
    deep = top / "city" / "2024"
    deep.mkdir(parents=True)
    for k, photo in enumerate(SAMPLES):
        shutil.copy(photo, (top if k % 2 else deep) / photo.name)
    odd = top / "odd"
    odd.mkdir()
    rocket = Image.open(SAMPLES[-1])
    exif = rocket.getexif()
    exif[0x0112] = 6  # stored sideways: the runner turns it upright
    rocket.save(odd / "exif-rotated.jpg", exif=exif)
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 7)).save(odd / "gray16.png")
    (odd / "truncated.jpg").write_bytes(SAMPLES[-1].read_bytes()[:700])
    (odd / "text.jpg").write_text("not a picture")
    (odd / "empty.png").write_bytes(b"")
    (odd / "bomb.png").write_bytes(bomb_png(10_000, 10_000))
    os.mkfifo(odd / "pipe.jpg")
    (odd / "folder.jpg").mkdir()
    (odd / "broken-link.png").symlink_to(odd / "nowhere.png")
    (odd / "notes.txt").write_text("not named like an image: not an input")
    return top


@pytest.fixture(scope="session")
def photo_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


def check_rows(rows: list[dict], tree: Path) -> None:
    """One row per input of the tree, errors where EXPECTED says, answers elsewhere."""
    names = [Path(r["path"]).name for r in rows]
    assert sorted(names) == sorted([p.name for p in SAMPLES] + list(EXPECTED))
    for row in rows:
        want = EXPECTED.get(Path(row["path"]).name, "ok")
        if want == "ok":
            assert row["error"] is None, row
        else:
            assert row["error"] and want in row["error"], row
