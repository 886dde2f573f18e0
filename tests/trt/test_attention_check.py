"""`build` reads the export's recorded attention form: a fused-attention graph on a TensorRT too old to parse
the ONNX Attention op is refused before any building, saying what to do."""

from __future__ import annotations

from dataclasses import replace

import pytest

from beit_deploy.core.errors import UsageError
from beit_deploy.core.manifest import DECOMPOSED, FUSED, read_manifest
from beit_deploy.trt.build import check_attention


def test_fused_attention_needs_tensorrt_10_14(tiny_export):
    manifest = read_manifest(tiny_export("classification"))
    assert manifest.attention == DECOMPOSED
    for version in ("10.0.1", "10.13.3", "11.0.0"):
        check_attention(manifest, version)
    fused = replace(manifest, attention=FUSED)
    with pytest.raises(UsageError, match=r"fused attention .* TensorRT 10.13.3 cannot parse .* --attention decomposed"):
        check_attention(fused, "10.13.3")
    check_attention(fused, "10.14.1")
    check_attention(fused, "11.0.0")
