"""The ONNX target through the pipeline API: parity, graph shape, metadata, reference data, verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from efexport.exporter.errors import ParityError
from efexport.exporter.manifest import file_table
from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
from efexport.exporter.recipes import Recipe, apply_overrides
from efexport.exporter.stages.load import load_model
from efexport.exporter.targets.onnx.export import read_metadata
from efexport.exporter.verify import verify_artifact
from efexport.validate.reference import ReferenceSet
from tests.packages import exported_package


def export(recipe: Recipe, out: Path, variant: str = "l1", weights: Path | None = None, **overrides) -> dict:
    recipe = apply_overrides(recipe, overrides) if overrides else recipe
    request = ExportRequest(variant=variant, weights=weights, seed=0, out_dir=out, recipe=recipe,
                            recipe_source="tests")
    return run_export(request, StageReporter(None)).manifest


SHARED_PACKAGES = pytest.mark.xdist_group("l1-packages")  # on the worker that exports the shared packages


@pytest.fixture(scope="module")
def l1_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return exported_package("onnx", tmp_path_factory)  # shared with other modules: tests here only read it


@pytest.mark.parametrize("variant", ["l3", "l7"])
def test_larger_variants_pass_parity(tmp_path: Path, fast_recipe: Recipe, variant: str) -> None:
    manifest = export(fast_recipe, tmp_path, variant)
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert manifest["model"]["variant"] == variant
    assert "Gather" not in manifest["target"]["op_counts"]


@SHARED_PACKAGES
def test_l1_artifact_contents(l1_artifact: tuple[Path, dict]) -> None:
    path, manifest = l1_artifact
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "manifest.json", "model.onnx", "reference_io.npz"]
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert manifest["weights"] == {"source": "random-init", "seed": 0}
    assert manifest["files"] == file_table(path)
    assert manifest["target"]["opset"] == 17
    assert manifest["capture"]["method"] == "torch.jit.trace"  # opset 17: below the dynamo exporter's range
    model = onnx.load(path / "model.onnx")
    assert model.opset_import[0].version == 17
    (graph_input,) = model.graph.input
    assert graph_input.name == "image"
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [o.name for o in model.graph.output] == ["logits"]
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Gather", "Identity", "BatchNormalization"}


@SHARED_PACKAGES
def test_l1_parity_is_measured_against_unfolded_pytorch(l1_artifact: tuple[Path, dict]) -> None:
    path, manifest = l1_artifact
    reference = ReferenceSet.load(path / "reference_io.npz")
    assert reference.kinds == ("noise",) * 4 + ("image",) * 4
    model = load_model(None, "l1", 0).model
    with torch.no_grad():
        expected = model(torch.from_numpy(reference.inputs)).numpy()
    np.testing.assert_array_equal(reference.outputs, expected)
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"image": x[None]})[0] for x in reference.inputs])
    assert np.abs(got - expected).max() == pytest.approx(manifest["parity"]["max_abs"], rel=1e-6)
    assert len(manifest["parity"]["per_input"]) == 8


@SHARED_PACKAGES
def test_l1_metadata_props_carry_the_manifest_facts(l1_artifact: tuple[Path, dict]) -> None:
    path, manifest = l1_artifact
    metadata = read_metadata(path / "model.onnx")
    for key in ("model", "weights", "preprocessing", "inputs", "outputs", "parity", "versions", "recipe", "package"):
        assert json.loads(metadata[f"efexport.{key}"]) == manifest[key]
    assert "efexport.files" not in metadata
    assert "efexport.latency" not in metadata  # measured per run: only in the manifest, so the model is reproducible


@SHARED_PACKAGES
def test_l1_latency_block(l1_artifact: tuple[Path, dict]) -> None:
    (latency,) = l1_artifact[1]["latency"]
    assert latency["schema"] == "efexport.latency/2"
    assert latency["batch_size"] == 1 and latency["threads"] == 2 and latency["compute_units"] is None
    method = latency["method"]
    assert latency["timed_runs"] == method["stable_windows"] * method["window_runs"]  # the settled windows' samples
    assert method["stable_windows"] <= method["windows"] == len(method["window_p50_ms"]) <= method["max_windows"]
    assert latency["noise"] >= 0 and method["converged"] == (latency["noise"] <= method["stable_within"])
    assert latency["device"]["runtimes"]["onnxruntime"] == ort.__version__
    stats = latency["stats_ms"]
    assert 0 < stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert latency["device"]["cpu"] and latency["runtime_version"] == ort.__version__


@SHARED_PACKAGES
def test_verify_passes_then_detects_tampering(l1_artifact: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = l1_artifact
    assert verify_artifact(path).passed
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in path.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    with np.load(copy / "reference_io.npz") as data:
        arrays = dict(data)
    arrays["outputs"][0, 0] += 1.0
    np.savez(copy / "reference_io.npz", **arrays)
    report = verify_artifact(copy)
    assert not report.passed and any("reference_io.npz" in p for p in report.problems)


def test_dynamic_batch_runs_any_batch(tmp_path: Path, fast_recipe: Recipe) -> None:
    manifest = export(fast_recipe, tmp_path, **{"export.dynamic_batch": True, "latency.batch_size": 4})
    path = tmp_path / "efficientformer-l1" / "onnx-fp32"
    assert manifest["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    assert manifest["latency"][0]["batch_size"] == 4
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = load_model(None, "l1", 0).model(torch.from_numpy(images)).numpy()
    assert np.abs(session.run(None, {"image": images})[0] - expected).max() <= 1e-4


@pytest.mark.parametrize("opset", [14, 20])  # the ends of the supported range (17, the default, is tested above)
def test_requested_opset_is_honoured(tmp_path: Path, fast_recipe: Recipe, opset: int) -> None:
    passes = [name for name in fast_recipe.fold.passes if opset < 20 or name != "erf-gelu"]
    manifest = export(fast_recipe, tmp_path, **{"export.opset": opset, "parity.noise_inputs": 1,
                                                "parity.image_inputs": 1, "fold.passes": passes})
    model = onnx.load(tmp_path / "efficientformer-l1" / "onnx-fp32" / "model.onnx")
    assert model.opset_import[0].version == opset and manifest["parity"]["passed"]
    # opset 14 needs the TorchScript exporter (on a trace of the capture), opset 20 converts the ExportedProgram
    assert manifest["capture"]["method"] == ("torch.export" if opset >= 18 else "torch.jit.trace")
    ops = manifest["target"]["op_counts"]
    assert (ops.get("Gelu", 0) == 15) == (opset >= 20)  # one Gelu node per MLP once the opset has the op


def test_failed_parity_gate_leaves_nothing(tmp_path: Path, fast_recipe: Recipe) -> None:
    strict = apply_overrides(fast_recipe, {"parity.tolerances.fp32.max_abs": 1e-12})
    with pytest.raises(ParityError, match=r"input \d+ \((noise|image)\): max_abs"):
        export(strict, tmp_path, **{"fold.passes": []})
    assert list(tmp_path.iterdir()) == []  # not even the variant directory the staging area was made in


@pytest.mark.parametrize("simplifier", ["onnxslim", "none"])
def test_other_simplifiers_export_passing_models(tmp_path: Path, fast_recipe: Recipe, simplifier: str) -> None:
    manifest = export(fast_recipe, tmp_path, **{"export.simplifier": simplifier, "parity.noise_inputs": 1,
                                                "parity.image_inputs": 1})
    assert manifest["target"]["simplifier"] == simplifier and manifest["parity"]["passed"]
