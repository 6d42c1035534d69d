"""Node groups: the unit the quantize stage keeps in float or quantizes (exporter/stages/quantize.py).

A group is a block, a downsampling layer, the stem, the norm or the head, named by its module path the same way
for every target (``stages/2/blocks/3``, ``stages/1/downsample``, ``stem``, ``head``), whether the path comes from
an ONNX node name (``/stages/2/blocks/3/mlp/fc1/Conv``) or from a captured node's module stack
(``stages.2.blocks.3.mlp.fc1``); ops outside any module form the group ``other``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

OTHER = "other"


def group_of(parts: Sequence[str]) -> str:
    """A module path, as its parts, to its group: up to the last index among the first four parts, plus a named
    layer of an indexed stage (``stages 1 downsample conv`` -> ``stages/1/downsample``)."""
    parts = [part for part in parts if part]
    if not parts:
        return OTHER
    numeric = [i for i, part in enumerate(parts[:4]) if part.isdigit()]
    if not numeric:
        return parts[0]
    end = numeric[-1] + 1
    if end < len(parts) and end < 4 and not (end + 1 < len(parts) and parts[end + 1].isdigit()):
        end += 1
    return "/".join(parts[:end])


def onnx_node_group(name: str) -> str:
    """``/stages/2/blocks/3/mlp/fc1/Conv`` -> ``stages/2/blocks/3``; ``/Reshape`` -> ``other``."""
    return group_of(name.split("/")[:-1])  # the module path, without the op's own name


def module_group(path: str) -> str:
    """``stages.2.blocks.3.mlp.fc1`` -> ``stages/2/blocks/3``; ``""`` -> ``other``."""
    return group_of(path.split("."))


def captured_node_group(node: Any) -> str:
    """A torch.export (fx) node's group, from its innermost module in ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return OTHER
    path, _ = list(stack.values())[-1]
    return module_group(path)
