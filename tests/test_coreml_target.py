"""The Core ML target end to end: a real coremltools conversion, the saved package executed by the reference
interpreter, the classifier interface and metadata, verification, and corruption caught by parity itself."""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from efexport.exporter.errors import ExitCode, InputSpecError, RecipeError
from efexport.exporter.manifest import MANIFEST_FILE, sha256_of
from efexport.exporter.pipeline import TRACE_FILE, ExportRequest, StageReporter, run_export
from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe
from efexport.exporter.targets.coreml.convert import read_labels, read_metadata, stable_package_identifiers
from efexport.validate.coreml_io import import_coremltools
from efexport.validate.mil_interpreter import load_program
from tests.helpers import run_cli

WEIGHT_BLOB = Path("model.mlpackage/Data/com.apple.CoreML/weights/weight.bin")


@pytest.fixture(scope="module")
def fp16_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("coreml")
    result = run_cli("coreml", "--variant", "l1", "--out", out, "--trace", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    artifact = Path(summary["artifact"])
    assert artifact == out / "efficientformer-l1" / "coreml-fp16"
    return artifact, json.loads((artifact / MANIFEST_FILE).read_text())


def test_fp16_package_has_the_promised_interface(fp16_artifact: tuple[Path, dict]) -> None:
    artifact, manifest = fp16_artifact
    target = manifest["target"]
    assert target["format"] == "coreml" and target["precision"] == "fp16"
    assert (target["minimum_deployment_target"], target["compute_units"], target["input"]) == ("iOS16", "ALL", "image")
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(artifact / "model.mlpackage"))
    assert spec.WhichOneof("Type") == "mlProgram"
    (image,) = spec.description.input
    assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (224, 224)
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    outputs = {o.name: o.type.WhichOneof("Type") for o in spec.description.output}
    assert outputs == {"classLabel": "stringType", "classLabel_probs": "dictionaryType", "logits": "multiArrayType"}
    assert spec.description.predictedFeatureName == "classLabel"
    ops = Counter(op.op_type for op in load_program(artifact / "model.mlpackage").functions["main"].operations)
    assert ops["transpose"] == 0 and ops["reshape"] == 1  # the channels-first MB3D form
    assert manifest["capture"]["method"] == "torch.export"  # converted from the ExportedProgram
    assert ops["classify"] == 1


def test_metadata_carries_the_manifest_facts(fp16_artifact: tuple[Path, dict]) -> None:
    artifact, manifest = fp16_artifact
    meta = read_metadata(artifact / "model.mlpackage")
    assert meta["author"] == "efexport" and meta["version"] == "1" and "Apache-2.0" in meta["license"]
    assert "EfficientFormer-l1" in meta["description"] and "random-init" in meta["description"]
    assert json.loads(meta["efexport.weights"]) == manifest["weights"]
    assert json.loads(meta["efexport.parity"]) == manifest["parity"]
    assert json.loads(meta["efexport.preprocessing"]) == manifest["preprocessing"]
    assert json.loads(meta["efexport.target"])["precision"] == "fp16"
    assert "efexport.versions" in meta and "efexport.latency_note" not in meta


def test_fp16_parity_headroom_and_trace_are_measured(fp16_artifact: tuple[Path, dict]) -> None:
    artifact, manifest = fp16_artifact
    parity = manifest["parity"]
    assert parity["passed"] and parity["min_cosine"] >= 0.9995 and parity["tolerances"]["max_abs"] is None
    assert all(row["top1_agree"] or row["top1_tie"] for row in parity["per_input"])
    assert 0 < parity["max_abs"] < 0.2  # FP16 rounding is visible, not zero: the interpreter rounds every op
    assert manifest["latency"] == [] and "macOS" in manifest["latency_note"]
    execution = manifest["reference_execution"]
    assert not execution["fp16_overflow"] and execution["ops_executed"] > 100
    largest = execution["fp16_largest_activations"][0]
    assert 1 < largest["max_abs"] < 65504 and largest["fraction_of_limit"] == pytest.approx(largest["max_abs"] / 65504)
    trace = json.loads((artifact / TRACE_FILE).read_text())
    assert len(trace["ops"]) > 100 and max(row["rel_err"] for row in trace["ops"]) > 0
    assert TRACE_FILE in manifest["files"]


def test_verify_reruns_the_interpreter_parity(fp16_artifact: tuple[Path, dict]) -> None:
    artifact, _ = fp16_artifact
    result = run_cli("verify", artifact, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["parity"]["min_cosine"] >= 0.9995
    assert "Core ML runs only on macOS" in report["not_checked_here"]["coreml"]  # said, not silently skipped


def test_package_item_identifiers_are_derived_not_random(fp16_artifact: tuple[Path, dict], tmp_path: Path) -> None:
    artifact, _ = fp16_artifact
    package = shutil.copytree(artifact / "model.mlpackage", tmp_path / "model.mlpackage")
    items = json.loads((package / "Manifest.json").read_text())
    by_path = {entry["path"]: identifier for identifier, entry in items["itemInfoEntries"].items()}
    assert set(by_path) == {"com.apple.CoreML/model.mlmodel", "com.apple.CoreML/weights"}
    assert items["rootModelIdentifier"] == by_path["com.apple.CoreML/model.mlmodel"]
    assert not stable_package_identifiers(package)  # already stable: nothing left to change
    items["itemInfoEntries"] = {str(uuid.uuid4()): entry for entry in items["itemInfoEntries"].values()}
    items["rootModelIdentifier"] = next(identifier for identifier, entry in items["itemInfoEntries"].items()
                                        if entry["path"].endswith("model.mlmodel"))  # as coremltools writes it
    (package / "Manifest.json").write_text(json.dumps(items))
    assert stable_package_identifiers(package)
    assert (package / "Manifest.json").read_bytes() == (artifact / "model.mlpackage" / "Manifest.json").read_bytes()


def _corrupt_weights(artifact: Path, copy_to: Path) -> Path:
    corrupted = shutil.copytree(artifact, copy_to)
    blob = corrupted / WEIGHT_BLOB
    data = bytearray(blob.read_bytes())
    start = len(data) // 3
    data[start:start + len(data) // 10] = np.random.default_rng(0).integers(0, 256, len(data) // 10,
                                                                           dtype=np.uint8).tobytes()
    blob.write_bytes(bytes(data))
    return corrupted


def test_altered_weight_bytes_are_caught_by_hashes_and_by_parity(fp16_artifact: tuple[Path, dict],
                                                                  tmp_path: Path) -> None:
    corrupted = _corrupt_weights(fp16_artifact[0], tmp_path / "corrupted")
    result = run_cli("verify", corrupted, "--json")
    assert result.returncode == ExitCode.VERIFY_FAILED
    problems = json.loads(result.stdout)["problems"]
    assert any("weight.bin: sha256 differs" in p for p in problems)
    assert any(p.startswith("parity:") for p in problems)


def test_altered_weights_with_a_rewritten_manifest_are_caught_by_parity_alone(fp16_artifact: tuple[Path, dict],
                                                                            tmp_path: Path) -> None:
    corrupted = _corrupt_weights(fp16_artifact[0], tmp_path / "rehashed")
    manifest = json.loads((corrupted / MANIFEST_FILE).read_text())
    manifest["files"][str(WEIGHT_BLOB)]["sha256"] = sha256_of(corrupted / WEIGHT_BLOB)
    (corrupted / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = run_cli("verify", corrupted, "--json")
    assert result.returncode == ExitCode.VERIFY_FAILED
    problems = json.loads(result.stdout)["problems"]
    assert problems and all(p.startswith("parity:") for p in problems)


def test_fp32_tensor_input_with_custom_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    recipe, _ = load_recipe(default_recipe_path("coreml"))
    recipe = apply_overrides(recipe, {"precision": "fp32", "coreml.input": "tensor", "coreml.labels": str(labels),
                                      "coreml.minimum_deployment_target": "iOS15", "parity.noise_inputs": 2,
                                      "parity.image_inputs": 2})
    result = run_export(ExportRequest("l1", None, 0, tmp_path / "out", recipe, "test"), StageReporter(None))
    manifest = result.manifest
    assert result.artifact.name == "coreml-fp32"
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs"] <= 1e-4
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(result.artifact / "model.mlpackage"))
    assert spec.description.input[0].type.WhichOneof("Type") == "multiArrayType"
    assert spec.mlProgram.functions["main"].opset == "CoreML5"  # iOS15
    assert manifest["target"]["labels"] == {"source": str(labels), "count": 1000}
    classes = load_program(result.artifact / "model.mlpackage").functions["main"].find_ops(op_type="classify")[0]
    assert list(classes.inputs["classes"].val)[:2] == ["class 0", "class 1"]


def test_labels_must_match_the_head(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    with pytest.raises(InputSpecError, match="2 labels, but the model has 1000 classes"):
        read_labels(str(short), 1000)
    duplicated = tmp_path / "dup.txt"
    duplicated.write_text("cat\ncat\n")
    with pytest.raises(InputSpecError, match="duplicate labels"):
        read_labels(str(duplicated), 2)
    assert read_labels("imagenet-1k", 1000)[:2] == ["tench", "goldfish"]
    result = run_cli("coreml", "--variant", "l1", "--labels", short, "--out", tmp_path / "out")
    assert result.returncode == ExitCode.BAD_INPUT and "2 labels" in result.stderr
    assert not (tmp_path / "out" / "efficientformer-l1").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"export.dynamic_batch": True}, "fixed batch of 1"),
    ({"fold.passes": ["fuse-conv-bn", "carry-mixer-scale"]}, "carry-mixer-scale"),
    ({"fold.passes": ["token-rows-mb3d", "channels-first-mb3d"]}, "alternative MB3D layouts"),
    ({"coreml.compute_units": "GPU_ONLY"}, "coreml.compute_units"),
])
def test_coreml_recipe_refuses_what_cannot_work(change: dict, message: str) -> None:
    recipe, _ = load_recipe(default_recipe_path("coreml"))
    with pytest.raises(RecipeError, match=message):
        apply_overrides(recipe, change)
