"""Recipes: per-platform defaults as TOML files in ``recipes/``, validated against a typed schema.

Every key is checked: an unknown key, a wrong type or an out-of-range value is a RecipeError naming the
key. Command-line flags override recipe values through ``apply_overrides`` and are validated the same way.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from efexport.exporter.errors import RecipeError
from efexport.exporter.geometry import final_token_grid
from efexport.exporter.passes import PASS_NAMES
from efexport.validate.latency import WindowRule

# The shipped default recipes: the top-level recipes/ folder, installed as the package efexport.recipes (one
# source of truth for the repository and the wheel). A wheel always installs onto a file system, so it is a path.
RECIPES_DIR = Path(str(resources.files("efexport.recipes")))
SUPPORTED_OPSETS = (14, 20)  # LayerNormalization is native from 17; below it is decomposed


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ExportSection(_Section):
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


class FoldSection(_Section):
    passes: list[Literal[PASS_NAMES]] = Field(list(PASS_NAMES), description="fold passes, in order")  # type: ignore[valid-type]
    max_abs: float = Field(1e-5, gt=0, description="largest error of the folded model's logits (float32) against "
                                                   "the unfolded model evaluated in float64; the gate is the larger "
                                                   "of this and twice the unfolded model's own float32 error")


class Tolerances(_Section):
    max_abs: float | None = Field(None, gt=0, description="largest allowed |exported - pytorch| over all logits; "
                                                          "unset: reported, not gated (FP16)")
    min_cosine: float = Field(gt=0, le=1, description="smallest allowed cosine similarity per input")
    top1_agreement: bool = Field(True, description="the top-1 class must agree on every input")


class ParitySection(_Section):
    seed: int = Field(0, ge=0, description="seed of the reference inputs")
    noise_inputs: int = Field(4, ge=0, le=64, description="standard-normal inputs")
    image_inputs: int = Field(4, ge=0, le=64, description="smooth image-like inputs, ImageNet-normalised")
    tolerances: dict[Literal["fp32", "fp16", "bf16"], Tolerances] = Field(description="gates per precision")

    @field_validator("image_inputs")
    @classmethod
    def _some_inputs(cls, value: int, info: Any) -> int:
        if value + info.data.get("noise_inputs", 1) < 1:
            raise ValueError("parity needs at least one input (noise_inputs + image_inputs >= 1)")
        return value


class LatencySection(_Section):
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


class CoreMLSection(_Section):
    minimum_deployment_target: Literal["iOS15", "iOS16", "iOS17", "iOS18"] = Field(
        "iOS16", description="oldest iOS the package runs on")
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU"] = Field(
        "ALL", description="compute units recorded in the package metadata and used for on-device runs")
    input: Literal["image", "tensor"] = Field(
        "image", description="image: a 224x224 RGB ImageType (normalisation in the graph); tensor: normalised "
                             "float (1, 3, H, W), as the ONNX artifact takes")
    labels: str = Field("imagenet-1k", description="class labels: imagenet-1k or a text file, one label per line")
    author: str = Field("efexport", description="MLModel author")
    license: str = Field("Apache-2.0 (EfficientFormer weights: see their source)", description="MLModel license")
    version: str = Field("1", description="MLModel version string")


class TensorRTSection(_Section):
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


class Recipe(_Section):
    target: Literal["onnx", "coreml", "tensorrt"]
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    export: ExportSection = ExportSection()
    fold: FoldSection = FoldSection()
    parity: ParitySection
    latency: LatencySection = LatencySection()
    coreml: CoreMLSection | None = None
    tensorrt: TensorRTSection | None = None

    @model_validator(mode="after")
    def _fits_the_target(self) -> Recipe:
        for section in ("coreml", "tensorrt"):
            if (getattr(self, section) is None) == (self.target == section):
                raise ValueError(f"{section}: a {section} recipe needs a [{section}] table, and only it may have one")
        if self.precision == "int8":
            raise ValueError("precision: int8 needs calibration data or a quantized (QDQ) graph, which efexport "
                             "does not make yet; use fp16, bf16 or fp32")
        allowed = {"onnx": ("fp32",), "coreml": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16", "bf16")}[self.target]
        if self.precision not in allowed:
            raise ValueError(f"precision: the {self.target} target exports {', '.join(allowed)}, not {self.precision}")
        if self.target == "coreml" and self.export.dynamic_batch:
            raise ValueError("export.dynamic_batch: Core ML packages here have a fixed batch of 1")
        if "carry-mixer-scale" in self.fold.passes and self.precision == "fp16":
            raise ValueError("fold.passes: carry-mixer-scale scales activations up to 16x; keep it out of FP16 "
                             "exports")
        if self.target == "tensorrt" and not self.export.dynamic_batch and self.tensorrt.profile != [1, 1, 1]:
            raise ValueError("tensorrt.profile: a static-batch export has batch 1 only; set profile = [1, 1, 1] or "
                             "export.dynamic_batch = true")
        return self

    @model_validator(mode="after")
    def _passes_fit_the_target(self) -> Recipe:
        if "channels-first-mb3d" in self.fold.passes and self.target != "coreml":
            raise ValueError("fold.passes: channels-first-mb3d is the Core ML form; ONNX runtimes want token rows "
                             "(token-rows-mb3d)")
        if {"channels-first-mb3d", "token-rows-mb3d"} <= set(self.fold.passes):
            raise ValueError("fold.passes: token-rows-mb3d and channels-first-mb3d are alternative MB3D layouts; "
                             "keep one")
        if "erf-gelu" in self.fold.passes and self.export.opset >= 20:
            raise ValueError(f"fold.passes: erf-gelu is for opsets below 20, and export.opset is "
                             f"{self.export.opset}, which has a Gelu op; drop the pass (--no-pass erf-gelu)")
        return self

    def tolerances(self, precision: str | None = None) -> Tolerances:
        """The gate for ``precision`` (default: the recipe's own; a runner of an fp32 file asks for fp32)."""
        precision = precision or self.precision
        try:
            return self.parity.tolerances[precision]
        except KeyError:
            raise RecipeError(f"recipe has no parity.tolerances.{precision} for precision {precision}") from None


def _describe(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) if str(p).isprintable() else repr(str(p)) for p in err["loc"])  # one line
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {message}" if key else message)
    return f"{origin}: " + "; ".join(lines)


def parse_recipe(data: dict, origin: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc, origin)) from None


def load_recipe(path: Path) -> tuple[Recipe, dict]:
    """The validated recipe and the raw table it came from."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {path}: not valid TOML: {exc}") from None
    except (RecursionError, ValueError) as exc:  # arrays nested beyond the stack, integers of thousands of digits
        raise RecipeError(f"recipe {path}: not a usable recipe: {type(exc).__name__}") from None
    return parse_recipe(data, f"recipe {path}"), data


DEFAULT_RECIPES = {"onnx": "onnx.toml", "coreml": "coreml.toml", "tensorrt": "tensorrt-a100.toml"}


def default_recipe_path(target: str) -> Path:
    return RECIPES_DIR / DEFAULT_RECIPES[target]


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """``{"export.opset": 18}`` -> a new, re-validated recipe. None values are flags not given."""
    data = recipe.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        table = data
        for part in parents:
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict):  # the recipe validation below names an unknown leaf key
            raise RecipeError(f"command-line options: {dotted!r}: no such recipe section")
        table[leaf] = value
    return parse_recipe(data, "command-line options")
