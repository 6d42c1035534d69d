"""The TensorRT target's portable half, end to end and in parts: everything but the engine build itself runs here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import helper

from efexport.exporter.errors import ExitCode, RecipeError
from efexport.exporter.manifest import MANIFEST_FILE
from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe
from efexport.exporter.targets.tensorrt.options import BuildOptions, Profile, build_script, trtexec_command
from efexport.exporter.targets.tensorrt.prepare import (
    RECIPE_COPY,
    SCRIPT_FILE,
    SIDECAR_FILE,
    UnsupportedOpError,
    build_options,
    check_ops,
    engine_unavailable_reason,
)
from tests.helpers import run_cli

NO_ENGINE_HERE = engine_unavailable_reason()


@pytest.fixture(scope="module")
def trt_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("trt")
    result = run_cli("tensorrt", "--variant", "l1", "--out", out, "--json")
    artifact = out / "efficientformer-l1" / "tensorrt-fp16"
    return artifact, json.loads((artifact / MANIFEST_FILE).read_text()), result


def _options(**changes: object) -> BuildOptions:
    base = {"input_name": "image", "image_size": 224, "precision": "fp16", "profile": Profile(1, 8, 64),
            "fp32_layers": ("/norm/LayerNormalization", "/attn/Softmax"), "workspace_mib": 4096,
            "optimization_level": 3, "timing_cache": "timing.cache", "hardware_compatibility": "none",
            "version_compatible": False}
    return BuildOptions(**(base | changes))


def test_portable_half_is_written_and_says_why_there_is_no_engine(trt_artifact) -> None:
    artifact, manifest, result = trt_artifact
    if NO_ENGINE_HERE is None:
        pytest.skip("TensorRT and a GPU are present: the engine path is tested in test_tensorrt_gpu.py")
    assert result.returncode == ExitCode.NO_ENGINE, result.stderr
    assert "no TensorRT engine built" in result.stderr and NO_ENGINE_HERE in result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "no-engine" and summary["engine"] == {"built": False, "reason": NO_ENGINE_HERE}
    names = sorted(p.name for p in artifact.iterdir())
    assert names == sorted(["model.onnx", MANIFEST_FILE, "reference_io.npz", SCRIPT_FILE, SIDECAR_FILE, RECIPE_COPY,
                            "README.md"])
    assert manifest["target"]["engine"] == {"built": False, "reason": NO_ENGINE_HERE}
    assert manifest["latency"] == [] and "no TensorRT engine" in manifest["latency_note"]


def test_prepared_onnx_is_proven_and_fits_tensorrt(trt_artifact) -> None:
    artifact, manifest, _ = trt_artifact
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs"] <= 1e-4  # fp32 gate: the ONNX is fp32
    model = onnx.load(artifact / "model.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    support = manifest["target"]["tensorrt_op_support"]
    assert support["opset"] == 17 and "LayerNormalization" in support["needs"]
    assert set(support["ops"]) == {node.op_type for node in model.graph.node}
    options = manifest["target"]["build_options"]
    assert options["profile"] == {"min": 1, "opt": 8, "max": 64} and options["precision"] == "fp16"
    layer_norms = [n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert options["fp32_layers"] == layer_norms and len(layer_norms) == 1 * 2 + 1 + 1  # l1: one MB3D block


def test_sidecar_carries_model_facts_options_and_parity(trt_artifact) -> None:
    artifact, manifest, _ = trt_artifact
    sidecar = json.loads((artifact / SIDECAR_FILE).read_text())
    assert sidecar["schema"] == "efexport.tensorrt-engine/1"
    assert sidecar["engine"] == manifest["target"]["engine"]
    assert sidecar["build_options"] == manifest["target"]["build_options"]
    assert sidecar["parity"]["prepared_onnx"] == manifest["parity"]
    for key in ("model", "weights", "preprocessing", "inputs", "outputs", "versions"):
        assert sidecar["model"][key] == manifest[key], key
    assert SIDECAR_FILE in manifest["files"]  # hashed like every other file
    assert run_cli("verify", artifact, "--quiet").returncode == 0


def test_build_script_and_recipe_copy_rebuild_what_was_recorded(trt_artifact, tmp_path: Path) -> None:
    artifact, manifest, _ = trt_artifact
    script = artifact / SCRIPT_FILE
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert all(arg.replace("'", "") in text.replace("'", "") for arg in manifest["target"]["trtexec"])
    # without trtexec on PATH the script says so and exits 127 instead of failing obscurely
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 127 and "trtexec not found" in run.stderr
    copied, _ = load_recipe(artifact / RECIPE_COPY)
    assert copied.model_dump() == manifest["recipe"]["values"]


def test_require_engine_fails_before_writing_anything(tmp_path: Path) -> None:
    if NO_ENGINE_HERE is None:
        pytest.skip("TensorRT and a GPU are present: an engine can be built")
    result = run_cli("tensorrt", "--variant", "l1", "--require-engine", "--out", tmp_path / "out")
    assert result.returncode == ExitCode.ENGINE_REQUIRED and NO_ENGINE_HERE in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_trtexec_command_follows_the_options() -> None:
    args = trtexec_command(_options(), "model.onnx")
    assert args[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--fp16" in args and "--precisionConstraints=obey" in args
    assert "--layerPrecisions=/norm/LayerNormalization:fp32,/attn/Softmax:fp32" in args
    assert {"--minShapes=image:1x3x224x224", "--optShapes=image:8x3x224x224", "--maxShapes=image:64x3x224x224"} \
        <= set(args)
    assert "--memPoolSize=workspace:4096" in args and "--builderOptimizationLevel=3" in args
    fp32 = trtexec_command(_options(precision="fp32", profile=None, hardware_compatibility="ampere_plus",
                                    version_compatible=True), "model.onnx")
    assert not any(a.startswith(("--fp16", "--layerPrecisions", "--minShapes")) for a in fp32)
    assert "--hardwareCompatibilityLevel=ampere+" in fp32 and "--versionCompatible" in fp32
    assert "--bf16" in trtexec_command(_options(precision="bf16"), "model.onnx")
    assert "trtexec" in build_script(_options(), "model.onnx")


def test_fp32_builds_pin_nothing_and_static_exports_have_no_profile(trt_artifact) -> None:
    artifact, _, _ = trt_artifact
    model = onnx.load(artifact / "model.onnx")
    recipe, _ = load_recipe(default_recipe_path("tensorrt"))
    fp32 = build_options(apply_overrides(recipe, {"precision": "fp32"}), model)
    assert fp32.fp32_layers == () and fp32.profile == Profile(1, 8, 64)
    static = build_options(apply_overrides(recipe, {"export.dynamic_batch": False, "tensorrt.profile": [1, 1, 1]}),
                           model)
    assert static.profile is None


def _graph_with(node: onnx.NodeProto) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("node", "named"), [
    (helper.make_node("NonZero", ["x"], ["y"], name="where_nonzero"), "'where_nonzero' is a NonZero"),
    (helper.make_node("FancyOp", ["x"], ["y"], name="custom_1", domain="com.example"),
     "'custom_1' is a com.example::FancyOp"),
])
def test_an_unsupported_op_is_rejected_by_node_name(node: onnx.NodeProto, named: str) -> None:
    with pytest.raises(UnsupportedOpError, match=named):
        check_ops(_graph_with(node))


def test_a_supported_graph_reports_its_restrictions() -> None:
    report = check_ops(_graph_with(helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[1])))
    assert report["ops"] == ["AveragePool"] and "2D or 3D" in report["restrictions"]["AveragePool"]


@pytest.mark.parametrize(("change", "message"), [
    ({"precision": "int8", "fold.passes": ["fuse-conv-bn", "fold-layer-scale", "blend-pool-mixer",
                                           "carry-mixer-scale"]}, "keep carry-mixer-scale out of int8 exports"),
    ({"tensorrt.profile": [8, 1, 64]}, "min <= opt <= max"),
    ({"export.dynamic_batch": False}, "static-batch export"),
    ({"tensorrt.timing_cache": "../cache"}, "plain file name"),
    ({"tensorrt.optimization_level": 7}, "tensorrt.optimization_level"),
])
def test_tensorrt_recipe_refuses_what_cannot_work(change: dict, message: str) -> None:
    recipe, _ = load_recipe(default_recipe_path("tensorrt"))
    with pytest.raises(RecipeError, match=message):
        apply_overrides(recipe, change)


def test_a_package_with_an_engine_verifies_on_a_machine_that_cannot_run_it(trt_artifact, tmp_path: Path) -> None:
    """The hashes and the prepared ONNX's parity are checked anywhere; the engine is reported as not checked here
    (and never executed: its bytes are a stand-in, which is all a machine without TensorRT can see)."""
    import shutil

    from efexport.exporter.manifest import file_table, write_manifest
    from efexport.exporter.verify import verify_package

    artifact, manifest, _ = trt_artifact
    copy = shutil.copytree(artifact, tmp_path / artifact.name)
    (copy / "model.plan").write_bytes(b"engine bytes built elsewhere")
    write_manifest(copy, manifest | {"files": file_table(copy)})
    report = verify_package(copy)
    assert report.passed, report.problems
    assert "tensorrt" in report.not_checked_here and "tensorrt" in report.not_checked_here["tensorrt"].lower()
    assert report.runtime_parity == {}
    (copy / "model.plan").write_bytes(b"tampered")
    assert "model.plan: sha256 differs from the manifest (modified?)" in verify_package(copy).problems
