"""Integer and compressed Core ML packages, proven on efexport's ML Program interpreter (Core ML itself runs only
on macOS): ``efexport coreml --precision int8`` (W8A8: int8 weights, quantize/dequantize activations, ranges
measured by the interpreter on scikit-image photographs) and ``--compress int8-weights`` / ``palettize-6bit``.
Real subprocess runs of the CLI on random l1 weights."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from efexport.exporter.errors import RecipeError
from efexport.exporter.node_groups import module_group
from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe, parse_recipe
from efexport.exporter.targets.coreml.quantize import op_group
from efexport.validate.mil_interpreter import load_program
from tests.helpers import edited_recipe, run_cli
from tests.test_calibration import photo_crops

pytestmark = pytest.mark.xdist_group("coreml-int8")



def _ops(package: Path) -> Counter:
    return Counter(op.op_type for op in load_program(package / "model.mlpackage").functions["main"].operations)


def _verified(package: Path) -> None:
    done = run_cli("verify", package, "--json")
    assert done.returncode == 0, done.stdout[-2000:]
    assert json.loads(done.stdout)["passed"] is True


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """l1 W8A8 on iOS17, calibrated on 15 photograph crops; a relaxed gate (random weights: the logits of a
    random head are close together) that quantizing every group passes."""
    work = tmp_path_factory.mktemp("coreml-int8")
    photos = photo_crops(work / "photos", per_photo=3)
    recipe = edited_recipe("coreml", work,
                           ('minimum_deployment_target = "iOS16"', 'minimum_deployment_target = "iOS17"'),
                           ("min_cosine = 0.995", "min_cosine = 0.95"),
                           ("min_top1_agreement = 0.9", "min_top1_agreement = 0.5"),
                           ("samples = 64 ", "samples = 15 "), ("held_out = 16 ", "held_out = 12 "))
    done = run_cli("coreml", "--variant", "l1", "--precision", "int8", "--calibration", photos, "--recipe", recipe,
                   "--out", work / "out", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    package = work / "out" / "efficientformer-l1" / "coreml-int8"
    return package, json.loads((package / "manifest.json").read_text())


def test_the_int8_package_is_w8a8(int8_package: tuple[Path, dict]) -> None:
    package, manifest = int8_package
    target = manifest["target"]
    assert (target["precision"], target["minimum_deployment_target"]) == ("int8", "iOS17")
    ops = _ops(package)
    # weights: int8 per output channel; activations: quantize/dequantize pairs around conv, linear, add, pooling
    assert ops["constexpr_affine_dequantize"] >= ops["conv"] > 30
    assert ops["quantize"] > 100 and ops["dequantize"] >= ops["quantize"]
    assert ops["classify"] == 1 and target["op_counts"]["quantize"] == ops["quantize"]
    quantization = manifest["quantization"]
    assert quantization["quantizer"]["activations"].startswith("int8")
    assert quantization["float_groups"] == [] and quantization["groups"] > 15
    assert quantization["calibration"]["source"] == "images"
    # the interpreter ran it: cosine against the float PyTorch model on 6 held-out photographs
    parity = manifest["parity"]
    assert parity["passed"] and parity["min_cosine"] >= 0.95
    card = (package / "README.md").read_text()
    assert "### Integer quantization (int8)" in card and "quantize/dequantize" in card
    _verified(package)


def test_node_groups_follow_the_module_path() -> None:
    assert module_group("stages.2.blocks.3.mlp.fc1") == "stages/2/blocks/3"
    assert module_group("stages.1.downsample.conv") == "stages/1/downsample"
    assert module_group("stem.conv1") == "stem"
    assert module_group("head") == "head"
    assert module_group("") == "other"
    groups = {"conv2d": "stem", "conv2d_1": "stem", "conv2d_10": "stages/1/blocks/0", "linear": "head"}
    assert op_group("conv2d_10_cast_fp16", groups) == "stages/1/blocks/0"
    assert op_group("conv2d_1_cast_fp16", groups) == "stem"
    assert op_group("linear_0_cast_fp16", groups) == "head"
    assert op_group("image__scaled__", groups) == "other"


def test_int8_needs_ios17_and_no_compression() -> None:
    recipe, _ = load_recipe(default_recipe_path("coreml"))
    with pytest.raises(RecipeError, match="iOS17"):
        apply_overrides(recipe, {"precision": "int8"})
    with pytest.raises(RecipeError, match="compress"):
        apply_overrides(recipe, {"precision": "int8", "coreml.minimum_deployment_target": "iOS18",
                                 "coreml.compress": "int8-weights"})
    assert apply_overrides(recipe, {"precision": "int8", "coreml.minimum_deployment_target": "iOS17"}).precision \
        == "int8"
    without_int8 = recipe.model_dump()
    del without_int8["parity"]["tolerances"]["int8"]
    with pytest.raises(RecipeError, match=r"parity\.tolerances\.int8"):
        parse_recipe(without_int8 | {"coreml": without_int8["coreml"] | {"compress": "palettize-6bit"}}, "test")


L1_WEIGHTS = 12.3e6  # parameters of the folded l1 (head included)


@pytest.mark.parametrize(("compress", "precision", "op", "bits", "relaxed"), [
    # the shipped recipe: a compressed package meets parity.tolerances.int8 (cosine 0.995, 90% top-1)
    ("int8-weights", "fp16", "constexpr_affine_dequantize", 8, False),
    # 64 values per tensor are far coarser on random weights (README: measured cosine); gate relaxed here
    ("palettize-6bit", "fp32", "constexpr_lut_to_dense", 6, True),
])
def test_compressed_weights(compress: str, precision: str, op: str, bits: int, relaxed: bool, tmp_path: Path) -> None:
    recipe = edited_recipe("coreml", tmp_path, *([("min_cosine = 0.995", "min_cosine = 0.8"),
                                        ("min_top1_agreement = 0.9", "min_top1_agreement = 0.25")] if relaxed else []))
    done = run_cli("coreml", "--variant", "l1", "--precision", precision, "--compress", compress, "--recipe", recipe,
                   "--out", tmp_path / "out", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    package = tmp_path / "out" / "efficientformer-l1" / f"coreml-{precision}"
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["target"]["compression"]["op"] == op
    ops = _ops(package)
    assert ops[op] >= ops["conv"] > 30 and ops["quantize"] == 0 and ops["dequantize"] == 0
    parity = manifest["parity"]
    assert parity["passed"] and parity["tolerances"]["min_cosine"] == (0.8 if relaxed else 0.995)
    assert parity["tolerances"]["max_abs"] is None  # gated on cosine and top-1, as int8
    blob = package / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    assert blob.stat().st_size < 1.1 * L1_WEIGHTS * bits / 8  # every large weight compressed
    assert compress in (package / "README.md").read_text()
    _verified(package)
