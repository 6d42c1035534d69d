"""The TensorRT target's facts in manifest.json (``target``): what ``prepare.py`` (TensorRTTarget.export) writes,
with the engine build's facts (``api.py``) or the reason there is no engine.

Named by the target's spec (``facts``); ``exporter/manifest_model.py`` puts it in the manifest's ``target`` union
and states its rule (no engine: not deployable) in the schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from efexport.exporter.manifest_blocks import (
    Absent,
    Block,
    Closed,
    Count,
    NonEmptyStr,
    NonNegative,
    NotDeployableWhen,
    PositiveInt,
    Precision,
    RelativePath,
    Sha256,
    Simplifier,
    TargetFacts,
)


class TensorRTProfile(Closed):
    """Batch sizes of the optimization profile."""

    min: PositiveInt
    opt: PositiveInt
    max: PositiveInt


class TensorRTBuildOptions(Block):
    """exporter.targets.tensorrt.options.BuildOptions.to_dict."""

    input_name: NonEmptyStr
    image_size: PositiveInt
    precision: Precision
    profile: TensorRTProfile | None = Field(
        description="Batch sizes of the optimization profile; null for a static batch of 1.")
    fp32_layers: Sequence[str]
    workspace_mib: PositiveInt
    optimization_level: Annotated[int, Field(ge=0, le=5)]
    timing_cache: RelativePath
    hardware_compatibility: Literal["none", "ampere_plus"]
    version_compatible: bool


_ENGINE_BUILT = ("plan_file", "sha256", "timing_cache_sha256", "tensorrt")


class TensorRTEngine(Block):
    """Whether model.plan was built here: the build's facts (exporter.targets.tensorrt.api.build_engine), or the
    reason there is none."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"built": {"const": True}}, "required": ["built"]},
        "then": {"required": list(_ENGINE_BUILT)},
        "else": {"required": ["reason"]},
    })

    built: bool
    reason: NonEmptyStr | Absent = None
    plan_file: RelativePath | Absent = None
    sha256: Sha256 | Absent = None
    timing_cache_sha256: Sha256 | Absent = None
    tensorrt: NonEmptyStr | Absent = None
    gpu: str | Absent = None
    compute_capability: str | Absent = None
    cuda_runtime: str | None = None
    driver: str | None = None
    build_seconds: NonNegative | Absent = None
    network_layers: Count | Absent = None
    layers_pinned_fp32: Count | Absent = None
    tf32: bool | Absent = None
    timing_cache_loaded: bool | Absent = None
    plan_bytes: Count | Absent = None

    @model_validator(mode="after")
    def _built_or_why_not(self) -> Self:
        needed = _ENGINE_BUILT if self.built else ("reason",)
        missing = [name for name in needed if name not in self.model_fields_set]
        if missing:
            raise ValueError(f"an engine with built: {str(self.built).lower()} needs {', '.join(missing)}")
        return self


class TensorRTTarget(TargetFacts):
    """exporter/targets/tensorrt/prepare.py: TensorRTTarget.export (the prepared ONNX, build options, trtexec command,
    engine facts)."""

    format: Literal["tensorrt"]
    precision: Precision
    opset: PositiveInt
    simplifier: Simplifier
    dynamic_batch: bool
    gpu: str | Absent = None
    trtexec: Annotated[Sequence[str], Field(min_length=1)]
    build_options: TensorRTBuildOptions
    engine: TensorRTEngine

    not_deployable_when: ClassVar[tuple[NotDeployableWhen, ...]] = (
        NotDeployableWhen(("engine", "built"), False, "a TensorRT package without an engine is not deployable"),
    )


__all__ = ["TensorRTBuildOptions", "TensorRTEngine", "TensorRTProfile", "TensorRTTarget"]
