"""Graph clean-ups applied to the simplified ONNX model, each a function saying how much it changed."""

from __future__ import annotations

import onnx


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Tensor-valued ``Constant`` nodes in the main graph become initializers of the same name.

    Before::                                   After::

        Constant(value=W) -> W -> Conv             initializer W -> Conv

    The simplifier leaves some folded weights as Constant nodes; as initializers they are data, not
    nodes, which every runtime and converter handles alike. Returns how many nodes were removed.
    """
    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None \
                and len(node.attribute) == 1 and len(node.output) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved
