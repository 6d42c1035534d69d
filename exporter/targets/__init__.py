"""Deployment targets, registered in one place (the TARGETS line below).

Each target declares itself in a TargetSpec (``efexport.exporter.targets.spec``): its command options, recipe
section, precisions, extra, outcomes; the implementation (export, runners, metadata) is imported by
``spec.load()`` only when needed, so listing targets or checking flags imports no torch.
"""

from __future__ import annotations

from efexport.exporter.targets.coreai import SPEC as COREAI
from efexport.exporter.targets.coreml import SPEC as COREML
from efexport.exporter.targets.onnx import SPEC as ONNX
from efexport.exporter.targets.spec import ExitOutcome, TargetOption, TargetSpec
from efexport.exporter.targets.tensorrt import SPEC as TENSORRT

TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (ONNX, COREML, TENSORRT, COREAI)}

__all__ = ["TARGETS", "ExitOutcome", "TargetOption", "TargetSpec"]
