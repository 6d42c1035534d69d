"""Compute cost of an exported ONNX graph: multiply-accumulates (MACs) for one image, and stored weights.

What is counted, and why. The EfficientFormer paper (arXiv 2206.01191, Table 1) reports GMACs: the
multiply-accumulates of the convolutions and the matrix products, for one 224x224 image. This module counts
the same thing on the graph we actually ship, so a benchmark can put our graph's cost next to the published
figures (l1 1.30, l3 3.93, l7 10.16 GMACs) and turn a measured latency into achieved GFLOP/s (2 x MACs / s).

* ``Conv``: output elements x (input channels / group) x kernel elements. The bias is not counted.
* ``Gemm``: M x N x K, with ``transA``/``transB`` respected. The bias (C) and alpha/beta are not counted.
* ``MatMul``: (product of the broadcast batch dimensions) x M x N x K, numpy semantics (1-D operands too).

Every other node (Add, Mul, Softmax, LayerNormalization, AveragePool, Erf, Reshape, Constant, ...) is assigned
no MACs, by the same convention: elementwise, normalisation, pooling and data-movement work is not
multiply-accumulate work. Those nodes are listed by op type in ``GraphCost.uncounted_ops`` so a reader sees what
was left out; they are never silently dropped. Likewise nothing that does carry MACs is silently counted as 0:
an op with MACs that has no rule here (ConvTranspose, quantised or contrib convolutions and products, Einsum),
a subgraph (If/Loop/Scan) or a model-local function, and a Conv/Gemm/MatMul whose shapes cannot be resolved
all raise ``ValueError`` naming the node.

Against the paper: these counts on the unfolded l1/l3/l7 equal ``torch.utils.flop_counter`` / 2 and come out
0.4-0.7% below the published figures. The published figures match these MACs plus 2 per BatchNorm output element
(fvcore's eval-mode BatchNorm convention) to their two decimals for all three variants (tests/test_macs.py). BatchNorm
is fused into the convolutions in every exported graph, so it is not counted here. Folding (merge-heads) removes
one 448/512/768 x 1000 classifier head: l1's folded graph has 448,000 MACs fewer than the unfolded model.

Shapes come from ``onnx.shape_inference`` on a copy of the model whose inputs have their leading (batch)
dimension fixed to 1 where it is symbolic or unknown, so a dynamic-batch export is counted for batch 1 (a
concrete leading dimension is taken as it is: a graph exported for a static batch of N counts N images).
``parameters`` counts the values of floating-point initializers and float ``Constant`` nodes: the weights the
graph stores (after folding, that can be fewer than the PyTorch model's parameters).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, TensorProto

MAC_OPS = ("Conv", "Gemm", "MatMul")
# Ops that carry MACs but have no rule here: refused rather than listed as costing nothing.
UNSUPPORTED_MAC_OPS = frozenset({
    "ConvTranspose", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "Einsum", "DeformConv",
    "FusedConv", "FusedGemm", "FusedMatMul", "Attention", "MultiHeadAttention", "QAttention",
})
DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = frozenset(
    getattr(TensorProto, name) for name in (
        "FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
        "FLOAT4E2M1",
    ) if hasattr(TensorProto, name)
)

Shape = tuple[int | None, ...]  # None: a dimension shape inference could not make concrete


@dataclass(frozen=True)
class GraphCost:
    macs: int  # multiply-accumulates for one image (batch 1)
    macs_by_op: dict[str, int]  # op type -> MACs, for the op types that carry MACs
    parameters: int  # values in floating-point initializers and float Constant nodes
    uncounted_ops: dict[str, int]  # op type -> node count, for nodes assigned no MACs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict:
        return {"macs": self.macs, "gmacs": self.gmacs, "macs_by_op": dict(self.macs_by_op),
                "parameters": self.parameters, "uncounted_ops": dict(self.uncounted_ops)}


def _describe(node: onnx.NodeProto) -> str:
    name = f"{node.name!r}" if node.name else "(unnamed)"
    return f"{node.op_type} node {name} (outputs {', '.join(node.output)})"


def _concrete(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return dim.HasField("dim_value")


def _fix_batch_to_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs and outputs have a concrete leading dimension: 1 where it was symbolic/unknown.

    Old value_info is dropped (it may carry the symbolic batch); shape inference recomputes it."""
    fixed = copy.deepcopy(model)
    graph = fixed.graph
    initializers = {t.name for t in graph.initializer}
    for value in [*graph.input, *graph.output]:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape") and len(tensor_type.shape.dim) > 0:
            leading = tensor_type.shape.dim[0]
            if not _concrete(leading):
                leading.Clear()
                leading.dim_value = 1
    del graph.value_info[:]
    return fixed


def _shape_of(value: onnx.ValueInfoProto) -> Shape | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if _concrete(d) else None for d in value.type.tensor_type.shape.dim)


def _known_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shape = _shape_of(value)
        if shape is not None:
            shapes[value.name] = shape
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


def _operand(node: onnx.NodeProto, index: int, shapes: dict[str, Shape], rank: int | None = None) -> tuple[int, ...]:
    """The fully concrete shape of input ``index`` (or output ``-1 - index`` for negative index)."""
    name = node.input[index] if index >= 0 else node.output[-1 - index]
    role = f"input {index}" if index >= 0 else f"output {-1 - index}"
    shape = shapes.get(name)
    if shape is None or any(d is None for d in shape):
        found = "no shape" if shape is None else f"shape {list(shape)}"
        raise ValueError(f"cannot count MACs of {_describe(node)}: {role} {name!r} has {found} after shape inference")
    if rank is not None and len(shape) != rank:
        raise ValueError(f"cannot count MACs of {_describe(node)}: {role} {name!r} has rank {len(shape)}, "
                         f"expected {rank}")
    return shape  # type: ignore[return-value]


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _conv_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int:
    weight = _operand(node, 1, shapes)  # (M, C / group, k1, k2, ...)
    out = _operand(node, -1, shapes, rank=len(weight))  # (N, M, d1, d2, ...)
    return math.prod(out) * math.prod(weight[1:])


def _gemm_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int:
    a, b = _operand(node, 0, shapes, rank=2), _operand(node, 1, shapes, rank=2)
    m, k = (a[1], a[0]) if _int_attr(node, "transA", 0) else a
    k_b, n = (b[1], b[0]) if _int_attr(node, "transB", 0) else b
    if k != k_b:
        raise ValueError(f"cannot count MACs of {_describe(node)}: inner dimensions differ ({k} vs {k_b})")
    return m * n * k


def _matmul_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int:
    a, b = _operand(node, 0, shapes), _operand(node, 1, shapes)
    if not a or not b:
        raise ValueError(f"cannot count MACs of {_describe(node)}: a MatMul operand is a scalar")
    a = a if len(a) >= 2 else (1, *a)  # numpy: a 1-D left operand is a row vector ...
    b = b if len(b) >= 2 else (*b, 1)  # ... and a 1-D right operand a column vector
    (m, k), (k_b, n) = a[-2:], b[-2:]
    if k != k_b:
        raise ValueError(f"cannot count MACs of {_describe(node)}: inner dimensions differ ({k} vs {k_b})")
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a, batch_b = (1,) * (width - len(batch_a)) + batch_a, (1,) * (width - len(batch_b)) + batch_b
    batch = []
    for da, db in zip(batch_a, batch_b, strict=True):
        if da != db and 1 not in (da, db):
            raise ValueError(f"cannot count MACs of {_describe(node)}: batch dimensions {list(a[:-2])} and "
                             f"{list(b[:-2])} do not broadcast")
        batch.append(db if da == 1 else da)
    return math.prod(batch) * m * n * k


_RULES = {"Conv": _conv_macs, "Gemm": _gemm_macs, "MatMul": _matmul_macs}


def _stored_floats(graph: onnx.GraphProto) -> int:
    total = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in FLOAT_TYPES)
    total += sum(math.prod(s.values.dims) for s in graph.sparse_initializer if s.values.data_type in FLOAT_TYPES)
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                total += math.prod(attr.t.dims)
            elif attr.name == "sparse_value" and attr.sparse_tensor.values.data_type in FLOAT_TYPES:
                total += math.prod(attr.sparse_tensor.values.dims)
            elif attr.name == "value_float":
                total += 1
            elif attr.name == "value_floats":
                total += len(attr.floats)
    return total


def _refuse_uncountable(model: onnx.ModelProto) -> None:
    functions = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"cannot count MACs of {_describe(node)}: it holds a subgraph, which is not supported")
        if (node.domain, node.op_type) in functions:
            raise ValueError(f"cannot count MACs of {_describe(node)}: model-local functions are not supported")
        if node.op_type in UNSUPPORTED_MAC_OPS or (node.op_type in MAC_OPS and node.domain not in DEFAULT_DOMAINS):
            raise ValueError(f"cannot count MACs of {_describe(node)} (domain {node.domain or 'ai.onnx'!r}): "
                             f"no MAC rule for this op")


def graph_cost(model: onnx.ModelProto) -> GraphCost:
    """MACs for one image (batch 1), by op type, and the stored float values of ``model``'s main graph."""
    _refuse_uncountable(model)
    inferred = onnx.shape_inference.infer_shapes(_fix_batch_to_one(model), check_type=False, strict_mode=False,
                                                 data_prop=True)
    shapes = _known_shapes(inferred.graph)
    macs_by_op: Counter[str] = Counter()
    uncounted: Counter[str] = Counter()
    for node in inferred.graph.node:
        rule = _RULES.get(node.op_type)
        if rule is None:
            uncounted[node.op_type] += 1
        else:
            macs_by_op[node.op_type] += rule(node, shapes)
    return GraphCost(macs=sum(macs_by_op.values()), macs_by_op=dict(sorted(macs_by_op.items())),
                     parameters=_stored_floats(model.graph), uncounted_ops=dict(sorted(uncounted.items())))
