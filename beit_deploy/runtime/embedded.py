"""The sizes of the images a container file holds inside it, read from their headers before anything is decoded.

An ICO (or CUR) or ICNS file is a directory of whole images (PNG, BMP/DIB, JPEG 2000), and its own header says
little about them: an ICO entry's size is one byte per side, and Pillow decodes the embedded PNG at whatever size
*its* header says, already inside `Image.open` (a 656 KB ICO whose header says 256x256 decoded to 742 MB).
`embedded_sizes` reads the container's directory and each embedded image's own header from the raw file, so the
pixel limit applies to what would really be decoded, before Pillow sees the file.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG2000 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")
_ICO_MAGIC = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")  # ICO, CUR
_HEADER_BYTES = 64  # enough for a PNG's IHDR and a DIB's BITMAPINFOHEADER sizes
_MAX_ENTRIES = 4096  # a directory longer than this is not an icon; Pillow refuses or reads it as it likes


def embedded_sizes(fobj: BinaryIO) -> list[tuple[int, int]]:
    """(width, height) of every image embedded in the ICO, CUR or ICNS file `fobj` (a seekable binary file at
    its start, left at its start), from each one's own header; [] for every other format. Entries whose header
    cannot be read are left to the decoder to refuse."""
    head = fobj.read(8)
    try:
        if head[:4] in _ICO_MAGIC:
            return _sizes(fobj, _ico_entries(fobj, struct.unpack("<H", head[4:6])[0]))
        if head[:4] == b"icns" and len(head) == 8:
            return _sizes(fobj, _icns_entries(fobj, struct.unpack(">I", head[4:8])[0]))
        return []
    finally:
        fobj.seek(0)


def _ico_entries(fobj: BinaryIO, count: int) -> list[tuple[int, int]]:
    """(offset, length) of each image an ICO/CUR directory lists."""
    fobj.seek(6)
    entries = []
    for _ in range(min(count, _MAX_ENTRIES)):
        row = fobj.read(16)
        if len(row) < 16:
            break
        length, offset = struct.unpack("<II", row[8:16])
        entries.append((offset, length))
    return entries


def _icns_entries(fobj: BinaryIO, total: int) -> list[tuple[int, int]]:
    """(offset, length) of each block's data in an ICNS file."""
    entries, at = [], 8
    while at + 8 <= total and len(entries) < _MAX_ENTRIES:
        fobj.seek(at)
        block = fobj.read(8)
        if len(block) < 8:
            break
        length = struct.unpack(">I", block[4:8])[0]
        if length < 8:
            break
        entries.append((at + 8, length - 8))
        at += length
    return entries


def _sizes(fobj: BinaryIO, entries: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [size for offset, length in entries if (size := _size_at(fobj, offset, length)) is not None]


def _size_at(fobj: BinaryIO, offset: int, length: int) -> tuple[int, int] | None:
    """The size one embedded image's header states (PNG, DIB or JPEG 2000), or None when it is none of those."""
    fobj.seek(offset)
    head = fobj.read(_HEADER_BYTES)
    if head.startswith(PNG_MAGIC) and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(_JPEG2000):
        from PIL import Image

        fobj.seek(offset)
        try:
            with Image.open(io.BytesIO(fobj.read(length))) as inner:  # its header only: nothing is decoded
                return inner.size
        except Exception:  # noqa: BLE001 - unreadable: the decoder refuses it later, as this image's error
            return None
    if len(head) >= 12 and struct.unpack("<I", head[:4])[0] in (12, 40, 52, 56, 64, 108, 124):  # a DIB header
        if struct.unpack("<I", head[:4])[0] == 12:
            width, height = struct.unpack("<hh", head[4:8])
        else:
            width, height = struct.unpack("<ii", head[4:12])
        return abs(width), abs(height) // 2  # an icon's DIB height counts its AND mask too
    return None
