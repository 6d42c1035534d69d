"""The Core ML target's facts in manifest.json (``target``): what ``convert.py`` (CoreMLTarget.export) writes.

Named by the target's spec (``facts``); ``exporter/manifest_model.py`` puts it in the manifest's ``target`` union.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from efexport.exporter.manifest_blocks import Absent, Block, NonEmptyStr, PositiveInt, TargetFacts


class CoreMLLabels(Block):
    """The class labels built into the classifier."""

    source: str
    count: PositiveInt


class InterfaceEntry(Block):
    """One input or output of the Core ML model as an app sees it."""

    name: NonEmptyStr
    type: str
    shape: Sequence[PositiveInt] | Absent = None


class CoreMLInterface(Block):
    """The package's own interface (which may differ from the captured graph's inputs: an image input takes
    pixels)."""

    inputs: Annotated[Sequence[InterfaceEntry], Field(min_length=1)]
    outputs: Annotated[Sequence[InterfaceEntry], Field(min_length=1)]


class CoreMLCompression(Block):
    """Weight compression of an fp16/fp32 package (``coreml.compress``): coremltools' pass, the weights' form, and
    the op that expands them at load time."""

    method: Literal["linear_quantize_weights", "palettize_weights"]
    weights: NonEmptyStr
    op: Literal["constexpr_affine_dequantize", "constexpr_lut_to_dense"]


class CoreMLTarget(TargetFacts):
    """exporter/targets/coreml/convert.py: CoreMLTarget.export."""

    format: Literal["coreml"]
    precision: Literal["fp32", "fp16", "int8"]
    minimum_deployment_target: Annotated[str, Field(pattern=r"^(iOS|macOS|tvOS|watchOS|visionOS)[0-9]+$")]
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU"]
    input: Literal["image", "tensor"]
    labels: CoreMLLabels | Absent = None
    interface: CoreMLInterface
    compression: CoreMLCompression | Absent = None


__all__ = ["CoreMLCompression", "CoreMLInterface", "CoreMLLabels", "CoreMLTarget", "InterfaceEntry"]
