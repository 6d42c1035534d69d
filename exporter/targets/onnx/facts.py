"""The ONNX target's facts in manifest.json (``target``): what ``export.py`` (OnnxTarget.export) writes.

Named by the target's spec (``facts``); ``exporter/manifest_model.py`` puts it in the manifest's ``target`` union.
"""

from __future__ import annotations

from typing import Literal

from efexport.exporter.manifest_blocks import PositiveInt, Simplifier, TargetFacts


class OnnxTarget(TargetFacts):
    """exporter/targets/onnx/export.py: OnnxTarget.export."""

    format: Literal["onnx"]
    precision: Literal["fp32", "int8"]
    opset: PositiveInt
    simplifier: Simplifier
    dynamic_batch: bool


__all__ = ["OnnxTarget"]
