"""One full-size export, as `make demo` does it: beit-base-patch16-224, random weights, fp32 + fp16 (slow: about
a minute and 3 GB; `make test-all`). tests/test_end_to_end_tiny.py runs the same chain on a tiny model in `make test`."""

import onnx
import pytest
from click.testing import CliRunner

from beit_deploy.exporter import onnx_graph
from beit_deploy.cli import main
from beit_deploy.core.manifest import read_manifest


@pytest.mark.slow
def test_beit_base_224_end_to_end(tmp_path):
    result = CliRunner().invoke(main, ["export", "--model", "beit-base-patch16-224", "--random-weights", "--fp16",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "beit-base-patch16-224" / "224x224"
    manifest = read_manifest(folder)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert len(graph.graph.node) <= 600
    assert onnx_graph.forbidden_nodes(graph) == []
    assert manifest.bias_mode == "materialised" and manifest.weights == {"kind": "random", "seed": 0}
    fp32, fp16 = manifest.parity["fp32"]["outputs"][0], manifest.parity["fp16"]["outputs"][0]
    assert fp32["rel"] <= 1e-4 and fp32["top1"] == 1.0
    assert fp16["cosine"] >= 0.999 and fp16["top1_flips"] == fp16["top1_ties"]
    assert manifest.outputs[0].shape == ("batch", 1000)
