"""Recipe schema: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from efexport.exporter.errors import RecipeError
from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def shipped_text() -> str:
    return default_recipe_path("onnx").read_text()


def test_shipped_onnx_recipe_values() -> None:
    recipe, raw = load_recipe(default_recipe_path("onnx"))
    assert recipe.export.opset == 17 and recipe.export.simplifier == "onnxsim"
    assert not recipe.export.dynamic_batch and recipe.export.image_size == 224
    assert recipe.tolerances().max_abs == 1e-4
    assert recipe.latency.rule().stable_windows == 3 and recipe.latency.rule().stable_within == 0.05
    assert raw["target"] == "onnx"


def test_overrides_replace_values_and_keep_the_rest() -> None:
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    changed = apply_overrides(recipe, {"export.opset": 18, "export.dynamic_batch": True, "latency.threads": None})
    assert changed.export.opset == 18 and changed.export.dynamic_batch
    assert changed.latency.threads == recipe.latency.threads and recipe.export.opset == 17


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("opset = 17", "opset = 17\nopsett = 18"), "export.opsett: unknown key"),
        (("[latency]", "[latencyy]"), "latencyy: unknown key"),
        (("opset = 17", 'opset = "17"'), "export.opset"),
        (("opset = 17", "opset = 9"), "export.opset"),
        (("opset = 17", "opset = 99"), "export.opset"),
        (('simplifier = "onnxsim"', 'simplifier = "magic"'), "export.simplifier"),
        (("image_size = 224", "image_size = 256"), "export.image_size"),
        (("max_abs = 1e-4\nmin_cosine", "max_abs = -1.0\nmin_cosine"), "parity.tolerances.fp32.max_abs"),
        (("max_abs = 1e-5            # each pass", "max_abs = 0.0 #"), "fold.max_abs"),
        (("min_cosine = 0.99999", "min_cosine = 1.5"), "parity.tolerances.fp32.min_cosine"),
        (("window_runs = 20", "window_runs = 1"), "latency.window_runs"),
        (("stable_within = 0.05", "stable_within = 1.5"), "latency.stable_within"),
        (("max_windows = 12", "max_windows = 2"), "latency: max_windows (2) must be at least stable_windows"),
        (("threads = 2", "threads = 0"), "latency.threads"),
        (("batch_size = 1", "batch_size = 0"), "latency.batch_size"),
        (('target = "onnx"', 'target = "tflite"'), "target"),
        (('passes = ["fuse-conv-bn",', 'passes = ["no-such-pass",'), "fold.passes.0"),
        (("dynamic_batch = false", "dynamic_batch = 1"), "export.dynamic_batch"),
    ],
)
def test_bad_values_are_errors_naming_the_key(tmp_path: Path, edit: tuple[str, str], named: str) -> None:
    old, new = edit
    text = shipped_text()
    assert old in text
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, text.replace(old, new, 1)))
    message = str(caught.value)
    assert message.startswith(f"recipe {tmp_path / 'recipe.toml'}: ") and named in message


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path, "target = [unclosed"))
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "absent.toml")


def test_override_errors_name_the_key() -> None:
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    with pytest.raises(RecipeError, match=r"export\.opset"):
        apply_overrides(recipe, {"export.opset": 5})
    with pytest.raises(RecipeError, match="7x7 token grid"):
        apply_overrides(recipe, {"export.image_size": 320})


def test_recipe_without_tolerances_for_its_precision(tmp_path: Path) -> None:
    text = shipped_text().replace("[parity.tolerances.fp32]", "[parity.tolerances.fp16]")
    recipe, _ = load_recipe(write(tmp_path, text))
    with pytest.raises(RecipeError, match=r"parity\.tolerances\.fp32"):
        recipe.tolerances()


def test_passes_that_do_not_fit_the_target_are_refused() -> None:
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    with pytest.raises(RecipeError, match=r"erf-gelu is for opsets below 20.*--no-pass erf-gelu"):
        apply_overrides(recipe, {"export.opset": 20})
    without = [name for name in recipe.fold.passes if name != "erf-gelu"]
    assert apply_overrides(recipe, {"export.opset": 20, "fold.passes": without}).export.opset == 20
    with pytest.raises(RecipeError, match="channels-first-mb3d is the Core ML form"):
        apply_overrides(recipe, {"fold.passes": [*recipe.fold.passes, "channels-first-mb3d"]})
