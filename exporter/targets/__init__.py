"""Deployment targets: each knows how to export a captured graph and how to run what it exported."""

from __future__ import annotations

from exporter.targets.base import ExportedModel, Runner, Target
from exporter.targets.coreml import CoreMLTarget
from exporter.targets.onnx import OnnxTarget
from exporter.targets.tensorrt import TensorRTTarget

TARGETS: dict[str, Target] = {"onnx": OnnxTarget(), "coreml": CoreMLTarget(), "tensorrt": TensorRTTarget()}

__all__ = ["TARGETS", "ExportedModel", "Runner", "Target"]
