"""Triton's config.pbtxt (protobuf text format of `inference.ModelConfig`) written from plain Python values.

A message is a dict; a list is a repeated field; `Enum("TYPE_FP32")` is written bare; str, int, bool are scalars.
Strings are escaped for the text format, so nothing in one (a label, a path) can end its field or add another.
Tests parse what this writes with Triton's own model-config protobuf (tritonclient.grpc.model_config_pb2).
"""

from __future__ import annotations

import re

_ENUM = re.compile(r"[A-Z][A-Z0-9_]*")


class Enum(str):
    """A protobuf enum value (TYPE_FP32, KIND_GPU): written without quotes."""

    def __new__(cls, value: str):
        if not _ENUM.fullmatch(value):
            raise ValueError(f"'{value}' is not an enum value name")
        return super().__new__(cls, value)


def quote(text: str) -> str:
    """A text-format string literal: UTF-8 bytes, with quotes, backslashes and every byte outside printable ASCII
    as escapes (so the literal is one line of ASCII whatever the text holds)."""
    out = []
    for byte in str(text).encode("utf-8"):
        char = chr(byte)
        if char in "\"\\":
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot write a {type(value).__name__} to config.pbtxt")


def to_pbtxt(message: dict, indent: int = 0) -> str:
    """A message as text format, one field per line, nested messages indented by two spaces."""
    pad, lines = " " * indent, []
    for key, value in message.items():
        if isinstance(value, (list, tuple)) and not any(isinstance(item, dict) for item in value):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(item) for item in value)}]")  # repeated scalars
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 2), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(line for line in lines if line)
