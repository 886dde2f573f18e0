"""beit-large-patch16-512: past the materialised-bias limit, so the gathered form and big files are exercised.

About 15 minutes on 2 cores: marked slow (`make test-all`), run by hand for releases.
"""

import onnx
import pytest

from beit_deploy.exporter.pipeline import ExportOptions, export
from beit_deploy.exporter.loading import ModelSpec


@pytest.mark.slow
def test_large_512_exports_with_gathered_bias(tmp_path):
    result = export(ModelSpec("beit-large-patch16-512", random_weights=True),
                    ExportOptions(fp16=True, out_dir=tmp_path))[0]
    manifest = result.manifest
    assert manifest.bias_mode == "gathered"
    assert manifest.parity["fp32"]["outputs"][0]["rel"] <= 1e-4
    assert manifest.parity["fp16"]["outputs"][0]["cosine"] >= 0.999
    graph = onnx.load(str(result.folder / "model.onnx"), load_external_data=False)
    assert sum(n.op_type == "Gather" and n.input[0].endswith("bias_table") for n in graph.graph.node) == 24
