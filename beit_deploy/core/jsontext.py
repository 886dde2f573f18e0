"""JSON text that is always valid JSON: Python's json module writes NaN and Infinity, which JSON does not have
(and which strict parsers such as JavaScript's refuse). A non-finite float becomes null instead."""

from __future__ import annotations

import json
import math


def finite(data):
    """`data` with every non-finite float (NaN, +-inf, numpy's included) replaced by None, recursively."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    return [finite(v) for v in data] if isinstance(data, (list, tuple)) else data


def dumps(data, **kwargs) -> str:
    """json.dumps of `finite(data)`, refusing NaN outright should one slip through."""
    return json.dumps(finite(data), allow_nan=False, **kwargs)
