"""An ONNX file's structure without its weights, read straight from the protobuf wire format. Standard library only.

`onnx.load` holds the whole file and its parsed copy: loading beit-base@384's 0.33 GiB graph peaked at 1.0 GiB
above the process (3x), to count nodes. `weightless(path)` scans the file's fields instead and seeks past the data
of every initializer larger than SMALL_BYTES, so reading a graph's nodes, inputs, outputs and initializer names,
shapes and types costs kilobytes whatever the weights weigh. Small initializers (shapes, axes, scalars) keep their
values: shape inference needs them. Parse the result with `onnx.ModelProto.FromString`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ArtifactError

SMALL_BYTES = 64 * 1024
# What `weightless` leaves out, by message: field number -> None (drop the field), a size (drop it when its payload
# is larger) or the rule for its sub-message. ModelProto.graph (7) -> GraphProto.initializer (5): TensorProto's data
# fields (float_data 4, int32_data 5, string_data 6, int64_data 7, raw_data 9, double_data 10, uint64_data 11);
# GraphProto.sparse_initializer (15).
_TENSOR_DATA = dict.fromkeys((4, 5, 6, 7, 9, 10, 11), SMALL_BYTES)
_WEIGHTLESS = {7: {5: _TENSOR_DATA, 15: None}}
_LENGTH_DELIMITED = 2
_FIXED = {1: 8, 5: 4}  # wire type -> payload bytes


def weightless(path: Path) -> bytes:
    """The serialised ModelProto at `path` without the data of its initializers larger than SMALL_BYTES (their
    names, dims and types kept)."""
    with open(path, "rb") as f:
        try:
            return _filtered(f, os.fstat(f.fileno()).st_size, _WEIGHTLESS)
        except (EOFError, ValueError) as exc:
            raise ArtifactError(f"'{path}' is not a readable ONNX file ({exc}): it is truncated or not ONNX; "
                                "export it again") from exc


def _filtered(f, end: int, rule: dict) -> bytes:
    """The fields from f's position to `end`, re-serialised without what `rule` drops."""
    out = bytearray()
    for number, wire, start, body, stop in _fields(f, end):
        what = rule.get(number, ...)
        if what is None or (type(what) is int and stop - body > what):
            continue
        if type(what) is dict and wire == _LENGTH_DELIMITED:
            f.seek(body)
            inner = _filtered(f, stop, what)
            out += _varint_bytes(number << 3 | _LENGTH_DELIMITED) + _varint_bytes(len(inner)) + inner
            continue
        f.seek(start)
        out += f.read(stop - start)
    return bytes(out)


def _fields(f, end: int):
    """(number, wire type, start, payload start, end) of each field from f's position to `end`. Each step seeks to
    the next field itself, so the caller may read or seek anywhere in between."""
    position = f.tell()
    while position < end:
        f.seek(position)
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == _LENGTH_DELIMITED:
            length = _varint(f)
        elif wire == 0:
            _varint(f)
            length = 0
        elif wire in _FIXED:
            length = _FIXED[wire]
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {position}")
        body = f.tell()
        if body + length > end:
            raise ValueError(f"field {number} at byte {position} runs past its message")
        yield number, wire, position, body, body + length
        position = body + length


def _varint(f) -> int:
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError("the file ends inside a field")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)
