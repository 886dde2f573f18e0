"""core.onnx_wire: a graph's structure read from disk without its weights."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from beit_deploy.core.errors import ArtifactError
from beit_deploy.core.onnx_wire import weightless
from beit_deploy.exporter.graph_files import load_graph


def _model(tmp_path, external: bool = False):
    weight = numpy_helper.from_array(np.arange(4096 * 64, dtype=np.float32).reshape(4096, 64), "w")
    ints = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])  # int64_data, not raw_data
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    reshape = helper.make_node("Reshape", ["y", "shape"], ["z"], name="rs")
    graph = helper.make_graph([node, reshape], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4096])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, None])], [weight, ints])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=external, location="m.onnx.data", size_threshold=1024)
    return model, path


@pytest.mark.parametrize("external", [False, True])
def test_structure_without_data(tmp_path, external):
    model, path = _model(tmp_path, external)
    light = onnx.ModelProto.FromString(weightless(path))
    assert light.graph.node == model.graph.node
    assert light.graph.input == model.graph.input and light.graph.output == model.graph.output
    assert light.opset_import == model.opset_import and light.ir_version == model.ir_version
    assert [(t.name, list(t.dims), t.data_type) for t in light.graph.initializer] == [
        (t.name, list(t.dims), t.data_type) for t in model.graph.initializer]
    weight, shape = light.graph.initializer
    assert not weight.raw_data and not weight.float_data  # 1 MiB: left on disk
    assert list(shape.int64_data) == [1, -1]  # small: kept, shape inference needs it
    assert len(weightless(path)) < 2000 < path.stat().st_size or external
    if external:  # where the data lives is kept, so the weights can still be found
        assert light.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert load_graph(path).graph.node == model.graph.node
    onnx.shape_inference.infer_shapes(light)  # usable as a graph


def test_truncated_file_is_an_artifact_error(tmp_path):
    _, path = _model(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="truncated"):
        weightless(path)
