"""The Core AI target's facts in manifest.json (``target``): what ``convert.py`` (CoreAITarget.export) writes.

Named by the target's spec (``facts``); ``exporter/manifest_model.py`` puts it in the manifest's ``target`` union.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from efexport.exporter.manifest_blocks import Block, Count, NonEmptyStr, PositiveInt, TargetFacts


class CoreAILabels(Block):
    """The class labels, in the asset's metadata under ``metadata_key``."""

    source: str
    count: PositiveInt
    metadata_key: NonEmptyStr


class CoreAIInterfaceEntry(Block):
    """One input or output of the asset's ``main`` function, as the asset's own summary states it."""

    name: NonEmptyStr
    type: str
    dtype: Literal["float16", "float32"]
    shape: Sequence[PositiveInt]


class CoreAIInterface(Block):
    """The asset's own interface: what its ``main`` function takes and returns (float16 in an FP16 asset)."""

    inputs: Annotated[Sequence[CoreAIInterfaceEntry], Field(min_length=1)]
    outputs: Annotated[Sequence[CoreAIInterfaceEntry], Field(min_length=1)]


class CoreAITarget(TargetFacts):
    """exporter/targets/coreai/convert.py: CoreAITarget.export."""

    format: Literal["coreai"]
    precision: Literal["fp32", "fp16", "int8"]  # int8: int8 weights and activations, float32 in between
    minimum_os: Annotated[str, Field(pattern=r"^[0-9]+$", description="iOS / macOS major version")]
    input: Literal["tensor"]
    labels: CoreAILabels
    interface: CoreAIInterface
    converter: NonEmptyStr
    runtime: NonEmptyStr  # the coreai-core release whose runtime the parity gate ran
    storage_types: dict[str, Count]  # scalar type -> how many stored values (FP16: nearly all Float16, INT8: Int8)


__all__ = ["CoreAIInterface", "CoreAIInterfaceEntry", "CoreAILabels", "CoreAITarget"]
