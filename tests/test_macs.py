"""validate.macs: MAC counts of real l1 exports against PyTorch's own counter and the paper, and the rules by hand.

Measured (random-init l1, seed 0; MACs are independent of the weights):

    l1  FlopCounterMode / 2 on the unfolded model   1,291,284,736   (conv 1,152,442,368, addmm 135,769,088,
                                                                       bmm 3,073,280)
        plain ONNX export (torch.onnx + onnxsim)     1,291,284,736   identical, op type by op type
        folded ONNX export (efexport onnx recipe)    1,290,836,736   448,000 fewer: merge-heads (448 x 1000)
    l3  FlopCounterMode / 2                          3,906,573,312   published 3.93
    l7  FlopCounterMode / 2                         10,119,325,696   published 10.16

So Conv/Gemm/MatMul MACs are 0.4-0.7% below the published GMACs (l1 1.30, l3 3.93, l7 10.16). The gap is
BatchNorm: adding 2 per BatchNorm output element (fvcore's eval-mode convention for an affine BatchNorm) gives
1.3018, 3.9285 and 10.1623 GMACs, which round to exactly the published figures for all three variants; adding 1
per element does not (3.92, 10.14). BatchNorm is fused into the convolutions in every deployed graph, so our
count leaves it out, as it leaves out all elementwise work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_fold import simplified_plain_export as plain_export
from efexport.exporter.models.efficientformer import CONFIGS, build_model
from efexport.exporter.recipes import default_recipe_path, load_recipe
from efexport.exporter.stages.capture import capture
from efexport.exporter.stages.fold import count_stored_values, fold_model, fold_probe
from efexport.exporter.stages.load import load_model
from efexport.exporter.targets.onnx.export import export_onnx
from efexport.validate.macs import GraphCost, graph_cost
from efexport.validate.reference import make_reference_inputs

OPSET = 17
pytestmark = pytest.mark.xdist_group("macs-l1")  # one worker exports l1 (both ways) once


# --------------------------------------------------------------------------------------------------- helpers


def flop_counter_macs(model: nn.Module) -> tuple[int, dict[str, int]]:
    """FlopCounterMode's total flops / 2 (it counts a multiply-accumulate as 2 flops), and per aten op."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224, device=next(model.parameters()).device))
    by_op = {str(op).removeprefix("aten."): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() // 2, by_op


def batchnorm_elements(model: nn.Module) -> int:
    """Output elements of every BatchNorm2d for one 224x224 image (the model on the meta device: shapes only)."""
    elements = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal elements
        elements += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224, device="meta"))
    for handle in handles:
        handle.remove()
    return elements


def _model(nodes: list, inputs: list, outputs: list, initializers: tuple = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)


# ------------------------------------------------------------------------------------------- real l1 exports


@dataclass(frozen=True)
class L1:
    flop_macs: int
    flop_by_op: dict[str, int]
    torch_parameters: int
    folded_stored_values: int  # parameters and float buffers of the folded PyTorch model
    folded: GraphCost
    plain: GraphCost
    folded_path: Path


@pytest.fixture(scope="module")
def l1(tmp_path_factory: pytest.TempPathFactory) -> L1:
    """l1 exported both ways once per module: folded as ``efexport onnx`` does, and plain (benchmarks.bench_fold)."""
    out = tmp_path_factory.mktemp("macs-l1")
    model = load_model(None, "l1", 0).model
    flop_macs, flop_by_op = flop_counter_macs(model)
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    passes = [name for name in recipe.fold.passes if OPSET < 20 or name != "erf-gelu"]  # as folded_export
    folded = fold_model(model, passes, fold_probe(*make_reference_inputs(0, 1, 1)), max_abs=recipe.fold.max_abs)
    folded_path = out / "folded.onnx"
    export_onnx(capture(folded.model, 224, 1000, dynamic_batch=False), folded_path, OPSET, "onnxsim")
    plain_path = out / "plain.onnx"
    plain_export(model, plain_path, OPSET)
    return L1(flop_macs, flop_by_op, sum(p.numel() for p in model.parameters()), count_stored_values(folded.model),
              graph_cost(onnx.load(folded_path)), graph_cost(onnx.load(plain_path)), folded_path)


def test_plain_export_counts_exactly_what_pytorch_counts(l1: L1) -> None:
    # The plain graph keeps both heads and every Linear/conv: the same MACs, op type by op type.
    assert l1.plain.macs == l1.flop_macs == 1_291_284_736
    assert l1.plain.macs_by_op == {"Conv": l1.flop_by_op["convolution"], "Gemm": l1.flop_by_op["addmm"],
                                   "MatMul": l1.flop_by_op["bmm"]}
    assert abs(l1.plain.macs / l1.flop_macs - 1) < 0.01


def test_folded_export_saves_exactly_the_merged_head(l1: L1) -> None:
    # Folding changes MACs in one place only: merge-heads replaces head + head_dist (two 448 -> 1000 Linears)
    # by one. BN fusion, scale folding and the token-rows layout move no MACs (per-channel work is not MACs).
    cfg = CONFIGS["l1"]
    merged_head = cfg.widths[-1] * cfg.num_classes
    assert l1.folded.macs == l1.flop_macs - merged_head == 1_290_836_736
    assert l1.folded.macs_by_op["Conv"] == l1.plain.macs_by_op["Conv"]
    assert l1.folded.macs_by_op["MatMul"] == l1.plain.macs_by_op["MatMul"]
    assert l1.folded.macs_by_op["Gemm"] == l1.plain.macs_by_op["Gemm"] - merged_head
    assert abs(l1.folded.macs / l1.flop_macs - 1) < 0.01


def test_elementwise_ops_are_listed_not_counted(l1: L1) -> None:
    for cost in (l1.folded, l1.plain):
        assert set(cost.macs_by_op) == {"Conv", "Gemm", "MatMul"}
        assert {"Add", "Softmax", "LayerNormalization", "AveragePool", "Erf"} <= set(cost.uncounted_ops)
        assert not set(cost.macs_by_op) & set(cost.uncounted_ops)
    assert l1.folded.uncounted_ops["Softmax"] == CONFIGS["l1"].num_mb3d


def test_parameters_are_the_stored_float_values(l1: L1) -> None:
    # Folded graph: exactly the folded PyTorch model's parameters and float buffers (11,823,680), plus the final
    # LayerNormalization's Scale (ones) and B (zeros), which ONNX requires although merge-heads made the norm
    # affine-free: 2 x 448. Total 11,824,576.
    assert l1.folded.parameters == l1.folded_stored_values + 2 * CONFIGS["l1"].widths[-1] == 11_824_576
    # Plain graph: 12,273,805 against the model's 12,289,928 parameters (published 12.29M): BatchNorm affines
    # fused into convolutions (-31,920), MB4D ls2 scales folded into convolutions by onnxsim (-3,024), and the
    # 8 x 49 attention-bias table gathered into an 8 x 49 x 49 constant (+18,816), plus 5 scalar constants.
    assert l1.plain.parameters == 12_273_805
    assert abs(l1.plain.parameters / l1.torch_parameters - 1) < 0.01
    assert l1.folded.parameters < l1.plain.parameters


def test_dynamic_batch_real_graph_counts_one_image(l1: L1) -> None:
    model = onnx.load(l1.folded_path)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    assert graph_cost(model).macs == l1.folded.macs
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # the caller's copy untouched


def test_l1_against_published_gmacs(l1: L1) -> None:
    # 1.2913 (unfolded, plain ONNX) and 1.2908 (folded ONNX) GMACs against the paper's 1.30: 0.7% low.
    published = CONFIGS["l1"].published_gmacs
    for cost in (l1.plain, l1.folded):
        assert abs(cost.gmacs / published - 1) < 0.10
        assert 0 < published - cost.gmacs < 0.01 * published


@pytest.mark.parametrize("variant", ["l1", "l3", "l7"])
def test_flop_counter_against_published_gmacs(variant: str) -> None:
    """No export: FlopCounterMode on the unfolded model, built on the meta device (shapes only, no weights)."""
    with torch.device("meta"):
        model = build_model(variant)
    macs, _ = flop_counter_macs(model)
    published = CONFIGS[variant].published_gmacs
    assert abs(macs / 1e9 / published - 1) < 0.10
    assert 0 < published - macs / 1e9 < 0.01 * published  # 0.4-0.7% low: the paper counts BatchNorm too
    # What the paper's figure is: Conv/Gemm/MatMul MACs plus 2 per BatchNorm output element, to 2 decimals.
    assert round((macs + 2 * batchnorm_elements(model)) / 1e9, 2) == published


def test_to_dict_is_json_and_includes_gmacs(l1: L1) -> None:
    as_dict = l1.folded.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["gmacs"] == l1.folded.gmacs == l1.folded.macs / 1e9
    assert set(as_dict) == {"macs", "gmacs", "macs_by_op", "parameters", "uncounted_ops"}
    assert as_dict["macs"] == sum(as_dict["macs_by_op"].values())


# ------------------------------------------------------------------------------------------ hand-built graphs


def test_grouped_conv() -> None:
    # x (1, 8, 10, 10), w (16, 8/4, 3, 3), stride 2, pad 1 -> y (1, 16, 5, 5): 400 outputs x 2 x 3 x 3.
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=4, kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1])
    model = _model([node], [_value("x", [1, 8, 10, 10])], [_value("y", None)],
                   [_weights("w", 16, 2, 3, 3), _weights("b", 16)])
    cost = graph_cost(model)
    assert cost.macs == 16 * 5 * 5 * 2 * 3 * 3 == 7200  # the bias is not counted
    assert cost.macs_by_op == {"Conv": 7200}
    assert cost.parameters == 16 * 2 * 3 * 3 + 16
    assert cost.uncounted_ops == {}


@pytest.mark.parametrize(("trans_a", "a_shape"), [(0, [3, 5]), (1, [5, 3])])
def test_gemm_with_transposed_b(trans_a: int, a_shape: list[int]) -> None:
    # A is 3 x 5 (or 5 x 3 with transA), B stored as 7 x 5 with transB=1: M 3, N 7, K 5.
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transA=trans_a, transB=1)
    model = _model([node], [_value("a", a_shape)], [_value("y", None)], [_weights("w", 7, 5), _weights("c", 7)])
    assert graph_cost(model).macs == 3 * 7 * 5


@pytest.mark.parametrize(("a_shape", "b_shape", "expected"), [
    ([2, 1, 4, 6], [3, 6, 5], 2 * 3 * 4 * 5 * 6),  # batch dims (2, 1) and (3,) broadcast to (2, 3)
    ([8, 49, 32], [8, 32, 49], 8 * 49 * 49 * 32),  # attention's q @ k^T per head
    ([49, 448], [448, 1000], 49 * 1000 * 448),  # plain 2-D
    ([6], [2, 6, 5], 2 * 1 * 5 * 6),  # a 1-D left operand is a row vector
    ([2, 4, 6], [6], 2 * 4 * 1 * 6),  # a 1-D right operand is a column vector
])
def test_matmul_broadcasting(a_shape: list[int], b_shape: list[int], expected: int) -> None:
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_value("a", a_shape), _value("b", b_shape)],
                   [_value("y", None)])
    assert graph_cost(model).macs == expected
    # numpy's matmul: output elements x K
    assert np.matmul(np.zeros(a_shape), np.zeros(b_shape)).size * a_shape[-1] == expected


def _conv_reshape_gemm(batch: int | str) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([-1, 4 * 8 * 8], dtype=np.int64), "shape")
    return _model(nodes, [_value("x", [batch, 3, 8, 8])], [_value("y", [batch, 10])],
                  [_weights("w", 4, 3, 3, 3), shape, _weights("fc", 256, 10)])


def test_dynamic_batch_is_counted_as_one_image() -> None:
    one_image = 4 * 8 * 8 * 3 * 3 * 3 + 256 * 10
    assert graph_cost(_conv_reshape_gemm(1)).macs == one_image
    dynamic = _conv_reshape_gemm("batch")
    assert graph_cost(dynamic).macs == one_image
    assert graph_cost(_conv_reshape_gemm(4)).macs == 4 * one_image  # a static batch is taken as it is
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # input not modified


def test_parameters_count_float_initializers_and_constants() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(10, np.float32))),
        helper.make_node("Constant", [], ["s"], value_float=0.5),
        helper.make_node("Constant", [], ["i"], value=numpy_helper.from_array(np.arange(7, dtype=np.int64))),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    initializers = [_weights("w", 4, 3, 1, 1), _weights("b", 4),
                    numpy_helper.from_array(np.ones(5, np.float16), "half"),
                    numpy_helper.from_array(np.arange(3, dtype=np.int64), "ints")]  # integers are not weights
    cost = graph_cost(_model(nodes, [_value("x", [1, 3, 2, 2])], [_value("y", None)], initializers))
    assert cost.parameters == 12 + 4 + 5 + 10 + 1
    assert cost.macs == 4 * 2 * 2 * 3
    assert cost.uncounted_ops == {"Constant": 3, "Mul": 1}


def test_unresolvable_matmul_raises_naming_the_node() -> None:
    # the token count is symbolic and not the leading dimension, so it is not taken for a batch of 1
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="attn_scores")
    model = _model([node], [_value("a", [1, "tokens", 32])], [_value("y", None)], [_weights("b", 32, 49)])
    with pytest.raises(ValueError, match=r"MatMul node 'attn_scores'.*input 0 'a'"):
        graph_cost(model)


def test_input_without_shape_raises() -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    model = _model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)], [_value("y", None)],
                   [_weights("b", 32, 49)])
    with pytest.raises(ValueError, match=r"'mm'.*no shape"):
        graph_cost(model)


def test_op_with_macs_but_no_rule_is_refused() -> None:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", kernel_shape=[2, 2], strides=[2, 2])
    model = _model([node], [_value("x", [1, 4, 8, 8])], [_value("y", None)], [_weights("w", 4, 2, 2, 2)])
    with pytest.raises(ValueError, match="ConvTranspose node 'up'"):
        graph_cost(model)
