"""The TensorRT target: the prepared ONNX, build recipe, build_engine.sh and engine.json everywhere; the engine
where TensorRT and a CUDA GPU exist.

This module declares the target (its TargetSpec and its ``[tensorrt]`` recipe section). ``prepare.py`` writes the
portable half, ``options.py`` the build options and trtexec command as data, ``api.py`` is the only module that
imports TensorRT, ``engine.py`` runs a built engine, ``card.md.j2`` holds its model-card sections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from efexport.exporter.errors import ExitCode
from efexport.exporter.recipe_sections import Section
from efexport.exporter.targets.onnx import OPSET
from efexport.exporter.targets.spec import ExitOutcome, PublishAllowance, TargetOption, TargetSpec

if TYPE_CHECKING:
    from efexport.exporter.targets.tensorrt.facts import TensorRTTarget


class TensorRTSection(Section):
    gpu: str = Field("A100", description="the GPU class the recipe is tuned for (recorded; engines are built on the "
                                         "serving GPU)")
    profile: list[int] = Field([1, 8, 64], description="optimization profile batch sizes [min, opt, max] "
                                                       "(dynamic-batch exports)")
    fp32_ops: list[str] = Field(["LayerNormalization", "Softmax"], description="ONNX op types whose layers stay "
                                                                               "FP32 in reduced-precision builds")
    workspace_mib: int = Field(4096, ge=64, le=1 << 20, description="builder workspace limit, MiB")
    optimization_level: int = Field(3, ge=0, le=5, description="builder optimisation level")
    timing_cache: str = Field("timing.cache", description="timing cache file inside the artifact")
    hardware_compatibility: Literal["none", "ampere_plus"] = Field(
        "none", description="ampere_plus: an engine that runs on any Ampere or newer GPU (slower)")
    version_compatible: bool = Field(False, description="an engine later TensorRT versions can run (lean runtime)")
    require_engine: bool = Field(False, description="fail (exit 9, nothing written) where no engine can be built, "
                                                    "instead of writing the portable half (exit 8)")

    @field_validator("profile")
    @classmethod
    def _ordered(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or not 1 <= value[0] <= value[1] <= value[2]:
            raise ValueError(f"profile must be [min, opt, max] batch sizes with 1 <= min <= opt <= max, got {value}")
        return value

    @field_validator("timing_cache")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"timing_cache must be a plain file name inside the artifact, got {value!r}")
        return value


def check_recipe(recipe: object) -> None:
    """A static-batch prepared graph serves batch 1 only."""
    if not recipe.export.dynamic_batch and recipe.tensorrt.profile != [1, 1, 1]:
        raise ValueError("tensorrt.profile: a static-batch export has batch 1 only; set profile = [1, 1, 1] or "
                         "export.dynamic_batch = true")


def parse_batch_profile(text: str) -> list[int]:
    """``1,8,64`` -> [1, 8, 64]; the recipe checks the order."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--batch-profile {text}: give three batch sizes, e.g. 1,8,64") from None


def not_deployable(target_facts: dict) -> list[str]:
    """A package without its engine is the portable half: not deployable as it is."""
    engine = target_facts.get("engine") or {}
    if engine.get("built", True):
        return []
    return [f"no TensorRT engine was built ({engine.get('reason', 'unknown reason')})"]


def needs_allowance(target: TensorRTTarget) -> str | None:
    """Why publishing the package (its manifest's target block) needs --allow-no-engine (None: it has its
    engine)."""
    if target.engine.built:
        return None
    return (f"no TensorRT engine was built ({target.engine.reason}); pass --allow-no-engine to publish the portable "
            "half")


def outcome(target: TensorRTTarget) -> ExitOutcome | None:
    """The portable half written without an engine (its manifest's target block): exit 8, with the reason."""
    if target.engine.built:
        return None
    return ExitOutcome("no-engine", int(ExitCode.NO_ENGINE),
                       f"no TensorRT engine built: {target.engine.reason}. The artifact holds the prepared ONNX, "
                       "build_engine.sh and engine.json: run build_engine.sh on the serving GPU. (exit code 8)")


SPEC = TargetSpec(
    name="tensorrt",
    title="TensorRT",
    summary="Prepare a TensorRT build for A100-class GPUs: TensorRT-ready ONNX (checked against the ops TensorRT "
            "parses), build recipe, build_engine.sh (trtexec) and engine.json; where TensorRT and a GPU exist, also "
            "build model.plan and measure its parity and latency. Exit code 8: written, but no engine could be "
            "built here (no TensorRT or no GPU); the reason is printed and recorded in engine.json.",
    writes="model.onnx (prepared), build_recipe.toml, build_engine.sh, engine.json (+ model.plan with TensorRT)",
    precisions=("fp32", "fp16", "bf16", "int8"),
    default_recipe="tensorrt-a100.toml",
    implementation="efexport.exporter.targets.tensorrt.prepare:TensorRTTarget",
    facts="efexport.exporter.targets.tensorrt.facts:TensorRTTarget",
    embedded="efexport.exporter.targets.tensorrt.embedded:embedded",
    options=(
        OPSET,
        TargetOption("--batch-profile", "tensorrt.profile", "Batch sizes min,opt,max of the optimization profile "
                     "(recipe default 1,8,64).", parse=parse_batch_profile),
        TargetOption("--workspace-mib", "tensorrt.workspace_mib", "Builder workspace limit in MiB.", int),
        TargetOption("--optimization-level", "tensorrt.optimization_level", "Builder optimisation level 0-5 "
                     "(recipe default 3).", int),
        TargetOption("--require-engine", "tensorrt.require_engine", "TensorRT: fail (exit 9, nothing written) when no "
                     "engine can be built here, instead of writing the portable half and exiting 8.", bool,
                     in_all=True),
    ),
    recipe_section=TensorRTSection,
    check_recipe=check_recipe,
    extra="tensorrt",  # only the engine build needs it: the portable half is written without
    outcome=outcome,
    not_deployable=not_deployable,
    publish_allowance=PublishAllowance("--allow-no-engine", "Publish a TensorRT package whose engine was not built "
                                                            "(refused otherwise).", needs_allowance),
    make_ok_exits=(int(ExitCode.NO_ENGINE),),
    ci_runner="gpu",
)
