"""Crafted image files that make Pillow raise outside its documented decode errors, made from Pillow's own
output with a few bytes changed (found by fuzzing; see tests/runtime/test_decoders.py), and an ICO hiding a
large PNG."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def _saved(fmt: str, mode: str) -> bytearray:
    array = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return bytearray(buffer.getvalue())


def dds_unknown_flags() -> bytes:
    """A DDS whose pixel-format flags are 0: Pillow raises NotImplementedError."""
    data = _saved("DDS", "RGB")
    data[80:84] = b"\0\0\0\0"
    return bytes(data)


def spider_stack_image() -> bytes:
    """A SPIDER file that says it is image 1 of a stack with no stack header: Pillow raises AttributeError."""
    data = _saved("SPIDER", "F")
    data[104:108] = struct.pack("<f", 1.0)  # Pillow writes SPIDER little-endian
    return bytes(data)


CRAFTED = {"bad.dds": dds_unknown_flags, "bad.spider": spider_stack_image}


def ico_with_png(side: int) -> bytes:
    """An ICO whose directory says 256x256 and whose PNG is side x side (zeros: a few KB per 1000 px side)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, "PNG")
    png = buffer.getvalue()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png
