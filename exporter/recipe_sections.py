"""The recipe sections every target shares: export, fold, parity, latency.

A target's own section (``[coreml]``, ``[tensorrt]``, ...) is declared by the target itself (its TargetSpec);
``efexport.exporter.recipes`` assembles the full Recipe model from these and the registered targets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from efexport.exporter.geometry import final_token_grid
from efexport.exporter.passes import PASS_NAMES
from efexport.exporter.precisions import PRECISIONS as PRECISION_AXIS
from efexport.validate.latency import WindowRule

SUPPORTED_OPSETS = (14, 20)  # LayerNormalization is native from 17; below it is decomposed
PRECISIONS = tuple(PRECISION_AXIS)  # each target declares which of these it exports


class Section(BaseModel):
    """A recipe table: unknown keys, wrong types and coercions are errors; values never change after loading."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ExportSection(Section):
    opset: int = Field(17, ge=SUPPORTED_OPSETS[0], le=SUPPORTED_OPSETS[1], description="ONNX opset")
    simplifier: Literal["onnxsim", "onnxslim", "none"] = Field("onnxsim", description="graph simplifier")
    dynamic_batch: bool = Field(False, description="dynamic batch axis instead of a static batch of 1")
    image_size: int = Field(224, description="input height and width; must give a 7x7 last-stage grid")

    @field_validator("image_size")
    @classmethod
    def _seven_by_seven(cls, value: int) -> int:
        if value < 1 or final_token_grid(value) != 7:
            raise ValueError(
                f"image size {value} is not supported: the attention bias is built for a 7x7 token grid, "
                "which a 224x224 input gives (sizes 193-224 also reach 7x7; others would need new biases)"
            )
        return value


class FoldSection(Section):
    passes: list[Literal[PASS_NAMES]] = Field(list(PASS_NAMES), description="fold passes, in order")  # type: ignore[valid-type]
    max_abs: float = Field(1e-5, gt=0, description="largest error of the folded model's logits (float32) against "
                                                   "the unfolded model evaluated in float64; the gate is the larger "
                                                   "of this and twice the unfolded model's own float32 error")


class Tolerances(Section):
    max_abs: float | None = Field(None, gt=0, description="largest allowed |exported - pytorch| over all logits; "
                                                          "unset: reported, not gated (FP16)")
    min_cosine: float = Field(gt=0, le=1, description="smallest allowed cosine similarity per input")
    top1_agreement: bool = Field(True, description="the top-1 class must agree on every input")
    min_top1_agreement: float | None = Field(None, gt=0, le=1, description=(
        "smallest allowed fraction of inputs whose top-1 class agrees (a tie within the measured error counts); "
        "for integer precisions, whose rounding may flip a near-tie: set top1_agreement = false with it"))

    @model_validator(mode="after")
    def _one_top1_rule(self) -> Tolerances:
        if self.top1_agreement and self.min_top1_agreement is not None:
            raise ValueError("top1_agreement (every input) and min_top1_agreement (a fraction) are alternatives; "
                             "set top1_agreement = false to gate on the fraction")
        return self


class ParitySection(Section):
    seed: int = Field(0, ge=0, description="seed of the reference inputs")
    noise_inputs: int = Field(4, ge=0, le=64, description="standard-normal inputs")
    image_inputs: int = Field(4, ge=0, le=64, description="smooth image-like inputs, ImageNet-normalised")
    tolerances: dict[Literal[PRECISIONS], Tolerances] = Field(description="gates per precision")  # type: ignore[valid-type]

    @field_validator("image_inputs")
    @classmethod
    def _some_inputs(cls, value: int, info: Any) -> int:
        if value + info.data.get("noise_inputs", 1) < 1:
            raise ValueError("parity needs at least one input (noise_inputs + image_inputs >= 1)")
        return value


class QuantizationSection(Section):
    """How an integer precision is calibrated and what it may keep in float (exporter/stages/quantize.py)."""

    method: Literal["minmax", "percentile", "entropy"] = Field(
        "percentile", description="how activation ranges are taken from the calibration inputs")
    samples: int = Field(64, ge=1, le=100_000, description="calibration inputs the ranges are measured on")
    held_out: int = Field(16, ge=2, le=10_000, description=(
        "inputs never calibrated on: half choose what stays in float, half gate the result (reference_io.npz)"))
    per_channel: bool = Field(True, description="one weight scale per output channel instead of per tensor")
    sensitivity: bool = Field(True, description=(
        "measure each node group's error alone, then keep the most sensitive groups in float until the gate holds "
        "on the selection inputs"))
    keep_float: list[str] = Field([], description="node groups always kept in float (e.g. \"stem\", "
                                                  "\"stages/2/blocks/3\")")
    selection_margin: float = Field(0.5, gt=0, le=1, description=(
        "the choice must pass on the selection inputs with this fraction of the gate's cosine error (1 - "
        "min_cosine), so the gate's unseen inputs have headroom"))
    max_float_groups: int = Field(64, ge=0, le=10_000, description=(
        "at most this many groups return to float; the search stops there and the gate decides"))


class LatencySection(Section):
    warmup_runs: int = Field(10, ge=1, le=10_000, description="untimed calls first")
    window_runs: int = Field(20, ge=3, le=10_000, description="timed calls per measurement window")
    stable_windows: int = Field(3, ge=2, le=20, description="the last this many window medians must agree")
    stable_within: float = Field(0.05, gt=0, lt=1, description="relative spread ((max - min) / median) within "
                                                               "which the window medians agree")
    max_windows: int = Field(12, ge=2, le=1000, description="stop here, reported as not converged")
    threads: int = Field(2, ge=1, le=256, description="intra-op threads of the runtime")
    batch_size: int = Field(1, ge=1, le=1024, description="batch of the timed runs (dynamic-batch exports)")

    @model_validator(mode="after")
    def _cap_allows_settling(self) -> LatencySection:
        if self.max_windows < self.stable_windows:
            raise ValueError(f"max_windows ({self.max_windows}) must be at least stable_windows "
                             f"({self.stable_windows})")
        return self

    def rule(self) -> WindowRule:
        return WindowRule(self.warmup_runs, self.window_runs, self.stable_windows, self.stable_within,
                          self.max_windows)
