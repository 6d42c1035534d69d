"""``efexport coreai --precision int8``: coreai-opt's W8A8 quantization, calibrated on real photographs
(scikit-image's), converted by coreai-torch, gated on Apple's Core AI runtime (coreai-core's Linux build) on
held-out photographs, and verified. A real subprocess run of the CLI on random l1 weights, with a relaxed gate
and one group kept in float by the recipe (each further candidate is a new conversion and runtime run, ~30 s
for l1: the search itself is the shared quantize stage's, tested on the ONNX target)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efexport.exporter.errors import ExitCode
from efexport.exporter.node_groups import module_group
from efexport.exporter.targets.coreai.convert import read_metadata
from tests.helpers import edited_recipe, run_cli
from tests.test_calibration import photo_crops

pytestmark = pytest.mark.xdist_group("coreai-int8")

HEAD_WEIGHTS = 448 * 1000  # l1's classifier: what stays float32 when the recipe keeps "head" in float



@pytest.fixture(scope="module")
def l1_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    work = tmp_path_factory.mktemp("coreai-int8")
    photos = photo_crops(work / "photos", per_photo=2)  # 18 crops of 9 photographs
    recipe = edited_recipe("coreai", work, ("min_cosine = 0.995", "min_cosine = 0.8"),
                         ("min_top1_agreement = 0.9", "min_top1_agreement = 0.5"),
                         ("samples = 64 ", "samples = 10 "), ("held_out = 16 ", "held_out = 8 "),
                         ("sensitivity = true ", "sensitivity = false "),
                         ("keep_float = [] ", 'keep_float = ["head"] '))
    done = run_cli("coreai", "--variant", "l1", "--precision", "int8", "--calibration", photos, "--recipe", recipe,
                   "--out", work / "out", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    package = work / "out" / "efficientformer-l1" / "coreai-int8"
    return package, json.loads(done.stdout), json.loads((package / "manifest.json").read_text())


def test_module_groups_are_the_onnx_targets() -> None:
    assert module_group("stages.2.blocks.3.mlp.fc1") == "stages/2/blocks/3"
    assert module_group("stages.1.downsample.conv") == "stages/1/downsample"
    assert module_group("stem.conv1") == "stem"
    assert module_group("head") == "head"
    assert module_group("") == "other"


def test_the_asset_stores_int8_weights_and_quantizes_activations(l1_int8: tuple[Path, dict, dict]) -> None:
    package, _, manifest = l1_int8
    target = manifest["target"]
    assert (target["format"], target["precision"]) == ("coreai", "int8")
    assert manifest["package"]["name"] == "efficientformer-l1-coreai-int8"
    assert "coreai-opt" in target["converter"]
    # nearly every weight stored as Int8 (12.3M parameters in l1), the head kept in float32 by the recipe
    storage = target["storage_types"]
    assert storage["Int8"] > 11_000_000
    assert HEAD_WEIGHTS <= storage["Float32"] < 2 * HEAD_WEIGHTS
    ops = target["op_counts"]
    assert ops["quantize"] > 100 and ops["dequantize"] > 100 and ops["blockwise_shift_scale"] > 30
    # float32 in and out: the quantization is inside the program
    assert target["interface"]["inputs"][0]["dtype"] == target["interface"]["outputs"][0]["dtype"] == "float32"
    quantization = manifest["quantization"]
    assert quantization["float_groups"] == quantization["keep_float"] == ["head"]
    assert quantization["groups"] > 20 and quantization["quantizer"]["tool"].startswith("coreai-opt")
    assert quantization["calibration"]["source"] == "images"
    assert len(read_metadata(package / "model.aimodel")["classLabels"]) == 1000  # the metadata written again
    assert "INT8: coreai-opt quantized" in (package / "README.md").read_text()


def test_parity_on_the_core_ai_runtime(l1_int8: tuple[Path, dict, dict]) -> None:
    _, document, manifest = l1_int8
    parity = manifest["parity"]
    assert parity["passed"] and parity["min_cosine"] >= 0.8 and document["parity"]["passed"] is True
    assert parity["tolerances"]["min_top1_agreement"] == 0.5 and len(parity["per_input"]) == 4
    assert manifest["quantization"]["selection"]["min_cosine"] >= 0.9  # half the gate's cosine error


def test_verify_reruns_the_int8_asset(l1_int8: tuple[Path, dict, dict]) -> None:
    package, _, _ = l1_int8
    done = run_cli("verify", package, "--json")
    assert done.returncode == 0, done.stdout[-2000:]
    assert json.loads(done.stdout)["passed"] is True


def test_percentile_calibration_is_refused_before_any_work(tmp_path: Path) -> None:
    done = run_cli("coreai", "--variant", "l1", "--precision", "int8", "--calibration-method", "percentile",
                   "--out", tmp_path / "out")
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr[-2000:]
    assert "quantization.method" in done.stderr and "minimum and maximum" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("manifest.json"))
