"""Recipes: per-platform defaults as TOML files in ``recipes/``, validated against a typed schema.

The schema is assembled here from the shared sections (``recipe_sections``) and the section each registered
target declares (``TargetSpec.recipe_section``), with the target's own rules (``TargetSpec.check_recipe``).

Every key is checked: an unknown key, a wrong type or an out-of-range value is a RecipeError naming the
key. Command-line flags override recipe values through ``apply_overrides`` and are validated the same way.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, create_model, model_validator

from efexport.exporter.errors import RecipeError
from efexport.exporter.precisions import PRECISIONS as PRECISIONS_AXIS
from efexport.exporter.recipe_sections import (
    PRECISIONS,
    ExportSection,
    FoldSection,
    LatencySection,
    ParitySection,
    QuantizationSection,
    Section,
    Tolerances,
)
from efexport.exporter.targets import TARGETS

# The shipped default recipes: the top-level recipes/ folder, installed as the package efexport.recipes (one
# source of truth for the repository and the wheel). A wheel always installs onto a file system, so it is a path.
RECIPES_DIR = Path(str(resources.files("efexport.recipes")))


def _target_sections() -> dict[str, Any]:
    """One optional field per target that declares a recipe section: ``coreml: CoreMLSection | None``."""
    return {name: (spec.recipe_section | None, None) for name, spec in TARGETS.items() if spec.recipe_section}


class RecipeBase(Section):
    target: Literal[tuple(TARGETS)]  # type: ignore[valid-type]
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    export: ExportSection = ExportSection()
    fold: FoldSection = FoldSection()
    parity: ParitySection
    latency: LatencySection = LatencySection()
    quantization: QuantizationSection = QuantizationSection()

    @model_validator(mode="after")
    def _fits_the_target(self) -> RecipeBase:
        spec = TARGETS[self.target]
        for name, other in TARGETS.items():
            if other.recipe_section and (getattr(self, name) is None) == (self.target == name):
                raise ValueError(f"{name}: a {name} recipe needs a [{name}] table, and only it may have one")
        if self.precision not in spec.precisions:
            raise ValueError(f"precision: the {self.target} target exports {', '.join(spec.precisions)}, not "
                             f"{self.precision}")
        if spec.check_recipe:
            spec.check_recipe(self)
        for name, why in PRECISIONS_AXIS[self.precision].refused_passes:
            if name in self.fold.passes:
                raise ValueError(f"fold.passes: keep {name} out of {self.precision} exports: {why}")
        return self

    @model_validator(mode="after")
    def _passes_fit_the_target(self) -> RecipeBase:
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


# The recipe: the shared sections plus each registered target's own (``recipe.coreml``, ``recipe.tensorrt``).
Recipe = create_model("Recipe", __base__=RecipeBase, __module__=__name__, **_target_sections())


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


def default_recipe_path(target: str) -> Path:
    """The shipped recipe a target's export uses without --recipe."""
    return RECIPES_DIR / TARGETS[target].default_recipe


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
