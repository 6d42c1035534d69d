"""What a deployment target provides to the pipeline; everything else (load, fold, capture, reference
inputs, parity, latency schema, manifest, packaging, verification) is shared."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from efexport.exporter.recipes import Recipe
    from efexport.exporter.stages.capture import CapturedGraph


@dataclass(frozen=True)
class ExportedModel:
    path: Path  # the model file (or package directory) inside the staging directory
    facts: dict = field(default_factory=dict)  # the manifest's "target" block: format, precision, opset, ...


class Runner(Protocol):
    """Runs a stack of inputs (K, 3, H, W) through an exported model, returning (K, num_classes)."""

    backend: str
    runtime_version: str
    # optional: is_deployment_runtime (False for a reference execution: never timed); input_kinds (the
    # reference input kinds it accepts, e.g. only "image" for an image-input Core ML model); report() -> dict
    threads: int | None
    static_batch: int | None

    def __call__(self, inputs: np.ndarray) -> np.ndarray: ...


class Target(Protocol):
    name: str
    model_file: str
    latency_unavailable: str  # why nothing is timed on a host without the target's runtime ("" if it always runs)

    def describe(self, recipe: Recipe) -> str: ...  # one line for the console, e.g. "ONNX opset 17, onnxsim"

    def preflight(self, recipe: Recipe, num_classes: int) -> None: ...  # raise on unusable target inputs

    def export(self, captured: CapturedGraph, staging: Path, recipe: Recipe) -> ExportedModel: ...

    def open_runner(self, path: Path, threads: int) -> Runner: ...  # the parity gate's runner

    def extra_runtimes(self, path: Path, recipe: Recipe) -> list[Runner]: ...  # real runtimes besides it, if any

    def embed_metadata(self, path: Path, entries: dict[str, str]) -> None: ...

    # A target that lists an integer precision (int8) also has:
    # quantizer(float_model: Path, calibration: np.ndarray, workdir: Path, recipe) -> stages.quantize.Quantizer
    #   (writes integer candidates of the float model it exported, keeping chosen node groups in float), and
    # finish_quantized(exported: ExportedModel, recipe) -> ExportedModel: its work once the chosen integer model
    #   replaced the float one (facts that changed, e.g. op counts; TensorRT builds its engine from it).
