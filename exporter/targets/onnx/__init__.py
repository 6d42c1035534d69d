"""The ONNX target: ONNX Runtime CPU for parity and latency.

This module declares the target (its TargetSpec: command options, precisions, recipe); ``export.py`` converts the
captured graph and runs it, ``cleanup.py`` tidies the graph, ``card.md.j2`` holds its model-card sections.
"""

from __future__ import annotations

from efexport.exporter.recipe_sections import SUPPORTED_OPSETS
from efexport.exporter.targets.spec import TargetOption, TargetSpec

# Options of the export section that the ONNX-based targets share
OPSET = TargetOption("--opset", "export.opset", f"ONNX opset, {SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[1]} "
                                                "(recipe default 17).", int)
DYNAMIC_BATCH = TargetOption("--dynamic-batch/--static-batch", "export.dynamic_batch",
                             "Dynamic batch axis, or a static batch of 1 (recipe default: static).", bool)
SIMPLIFIER = TargetOption("--simplifier", "export.simplifier", "Graph simplifier (recipe default onnxsim).",
                          choices=("onnxsim", "onnxslim", "none"))
IMAGE_SIZE = TargetOption("--image-size", "export.image_size", "Input height and width; the attention bias allows "
                                                               "only a 7x7 token grid (224).", int)


def check_recipe(recipe: object) -> None:
    """ONNX has no target-specific rules beyond the shared sections."""


SPEC = TargetSpec(
    name="onnx",
    title="ONNX",
    summary="Export to ONNX, prove parity with ONNX Runtime, measure latency, and package the artifact.",
    writes="model.onnx",
    precisions=("fp32", "int8"),
    default_recipe="onnx.toml",
    implementation="efexport.exporter.targets.onnx.export:OnnxTarget",
    facts="efexport.exporter.targets.onnx.facts:OnnxTarget",
    embedded="efexport.exporter.targets.onnx.embedded:embedded",
    options=(OPSET, DYNAMIC_BATCH, SIMPLIFIER, IMAGE_SIZE),
    check_recipe=check_recipe,
)
