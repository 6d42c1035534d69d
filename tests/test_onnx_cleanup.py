from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from efexport.exporter.targets.onnx.cleanup import constants_to_initializers


def _model_with_constant_weight() -> onnx.ModelProto:
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_constant_nodes_become_initializers_and_results_hold() -> None:
    model = _model_with_constant_weight()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = _run(model, x)
    assert constants_to_initializers(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert [i.name for i in model.graph.initializer] == ["w"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), expected)
    assert constants_to_initializers(model) == 0  # nothing left to move


def test_small_constants_are_lifted_and_names_kept() -> None:
    """onnx-ir's pass skips tensors under 16 elements by default; our shape/scale Constants have 1 to 4."""
    model = _model_with_constant_weight()
    scale = helper.make_node("Constant", [], ["s"], name="scale_const", value=numpy_helper.from_array(np.float32(2.0)))
    mul = helper.make_node("Mul", ["y", "s"], ["z"], name="scale_mul")
    model.graph.node.extend([scale, mul])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 4]))
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    expected = _run(model, x)
    assert constants_to_initializers(model) == 2
    assert [(n.op_type, n.name) for n in model.graph.node] == [("MatMul", ""), ("Mul", "scale_mul")]
    assert [i.name for i in model.graph.initializer] == ["w", "s"]
    np.testing.assert_array_equal(_run(model, x), expected)
    again = onnx.ModelProto()
    again.CopyFrom(model)
    constants_to_initializers(again)
    assert again.SerializeToString() == model.SerializeToString()  # a no-op second pass, same bytes
