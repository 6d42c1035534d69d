"""Deployment targets: each knows how to export a captured graph and how to run what it exported."""

from __future__ import annotations

from efexport.exporter.targets.base import ExportedModel, Runner, Target
from efexport.exporter.targets.coreml import CoreMLTarget
from efexport.exporter.targets.onnx import OnnxTarget
from efexport.exporter.targets.tensorrt import TensorRTTarget

TARGETS: dict[str, Target] = {"onnx": OnnxTarget(), "coreml": CoreMLTarget(), "tensorrt": TensorRTTarget()}

__all__ = ["TARGETS", "ExportedModel", "Runner", "Target"]
