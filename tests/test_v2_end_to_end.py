"""EfficientFormerV2 where V1 goes: every variant to ONNX from a checkpoint, s0 through the command line on every
target, then verify, bundle and publish.

* s1, s2 and l: an upstream training checkpoint (.pth) or a timm .safetensors file with realistic weights goes
  through the whole ONNX pipeline in-process (load, fold, capture, export, the parity gate on ONNX Runtime,
  package): the package is named by the family, the manifest says which family, variant and layout it came
  from, and the gate's figures are those of an exact fp32 export.
* s0: ``efexport all --variant s0 --json`` as a real subprocess (ONNX, Core ML through our ML Program
  interpreter, TensorRT's portable half, Core AI on Apple's runtime), then ``verify`` and ``bundle`` of each
  package and ``publish`` of the ONNX bundle to a directory registry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efexport.exporter.manifest import MANIFEST_FILE
from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe
from tests.helpers import run_cli
from tests.helpers_v2 import realistic_model_v2, upstream_state_dict_v2
from tests.packages import FAST_LATENCY


def _checkpoint(variant: str, layout: str, root: Path) -> Path:
    model = realistic_model_v2(variant, seed=5)
    if layout == "timm":
        path = root / f"efficientformerv2_{variant}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        path = root / f"eformer_{variant}_450.pth"
        torch.save({"model": upstream_state_dict_v2(model), "epoch": 449,
                    "args": argparse.Namespace(model=f"efficientformerv2_{variant}")}, path)
    return path


@pytest.mark.parametrize(("variant", "layout"), [("s1", "upstream"), ("s2", "timm"), ("l", "upstream")])
def test_a_v2_checkpoint_exports_to_onnx_with_parity(variant: str, layout: str, tmp_path: Path) -> None:
    weights = _checkpoint(variant, layout, tmp_path)
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    request = ExportRequest(variant=None, weights=weights, seed=0, out_dir=tmp_path / "out",
                            recipe=apply_overrides(recipe, FAST_LATENCY),
                            recipe_source=str(default_recipe_path("onnx")))
    artifact = run_export(request, StageReporter(None)).artifact

    assert artifact == tmp_path / "out" / f"efficientformerv2-{variant}" / "onnx-fp32"
    manifest = json.loads((artifact / MANIFEST_FILE).read_text())
    assert (manifest["model"]["family"], manifest["model"]["version"]) == ("EfficientFormerV2", "v2")
    assert manifest["model"]["variant"] == variant
    assert manifest["weights"]["layout"] == layout and manifest["package"]["deployable"] is True
    parity = manifest["parity"]
    assert parity["passed"] is True
    assert parity["max_abs"] <= 1e-4 and parity["min_cosine"] >= 0.99999 and parity["top1_agreement"] == 1.0
    folded = manifest["fold"]
    assert sum(folded["op_counts_after"].values()) < sum(folded["op_counts_before"].values())
    assert any(p["changed"] for p in folded["passes"])


@pytest.fixture(scope="module")
def s0_everywhere(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("v2-all")
    result = run_cli("all", "--variant", "efficientformerv2_s0", "--out", root / "out", "--bundle-dir",
                     root / "bundles", "--json", cwd=root, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, json.loads(result.stdout)


def test_s0_goes_to_every_target_through_the_command_line(s0_everywhere: tuple[Path, dict]) -> None:
    root, document = s0_everywhere
    packages = sorted(p.relative_to(root / "out").as_posix() for p in (root / "out").glob("*/*") if p.is_dir())
    assert packages == ["efficientformerv2-s0/coreai-fp16", "efficientformerv2-s0/coreml-fp16",
                        "efficientformerv2-s0/onnx-fp32", "efficientformerv2-s0/tensorrt-fp16"]
    for package in (root / "out" / "efficientformerv2-s0").iterdir():
        manifest = json.loads((package / MANIFEST_FILE).read_text())
        assert manifest["package"]["name"] == f"efficientformerv2-s0-{package.name}"
        assert manifest["parity"]["passed"] is True
        verified = run_cli("verify", package, "--json", cwd=root)
        assert verified.returncode == 0, verified.stderr[-2000:]
    bundles = sorted(p.name for p in (root / "bundles").glob("*.zip"))
    assert bundles == [f"efficientformerv2-s0-{t}.zip"
                       for t in ("coreai-fp16", "coreml-fp16", "onnx-fp32", "tensorrt-fp16")]
    assert document  # the --json summary parsed


def test_s0_core_ai_parity_ran_on_apples_runtime(s0_everywhere: tuple[Path, dict]) -> None:
    """s0 (FP16, the shipped recipe) on Core AI: the gate ran on Apple's runtime; V2 has no exclude-pad pooling,
    so include-pad-pooling had nothing to rewrite, and the stride-2 attention's bilinear upsampling converts."""
    root, _ = s0_everywhere
    manifest = json.loads((root / "out" / "efficientformerv2-s0" / "coreai-fp16" / MANIFEST_FILE).read_text())
    parity = manifest["parity"]
    assert parity["runtime"]["backend"] == "coreai-runtime" and parity["min_cosine"] >= 0.9995
    assert manifest["target"]["interface"]["inputs"][0]["dtype"] == "float16"
    passes = {p["name"]: p for p in manifest["fold"]["passes"]}
    assert passes["include-pad-pooling"]["changed"] is False


def test_an_s0_bundle_publishes(s0_everywhere: tuple[Path, dict]) -> None:
    root, _ = s0_everywhere
    bundle = root / "bundles" / "efficientformerv2-s0-onnx-fp32.zip"
    registry = root / "registry"
    result = run_cli("publish", bundle, "--to", registry, "--version", "2.0.0", "--allow-random-weights",
                     "--json", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    published = [p.name for p in registry.rglob("*.zip")]
    assert published == ["efficientformerv2-s0-onnx-fp32.zip"]


def test_s0_onnx_dynamic_batch_and_its_resize_match_pytorch(tmp_path: Path) -> None:
    """The stride-2 attention's bilinear upsampling must be PyTorch's (half-pixel, not aligned corners) at
    every batch size: ONNX Runtime on batch 3 of a dynamic-batch export against the unfolded model."""
    import numpy as np
    import onnx

    from efexport.exporter.stages.capture import capture
    from efexport.exporter.targets.onnx.export import OnnxRunner, export_onnx
    from tests.helpers import with_passes

    recipe, _ = load_recipe(default_recipe_path("onnx"))
    model = realistic_model_v2("s0")
    folded = with_passes(realistic_model_v2("s0"), list(recipe.fold.passes)).eval()
    path = tmp_path / "s0.onnx"
    export_onnx(capture(folded, 224, 1000, dynamic_batch=True), path, 17, "onnxsim")

    resizes = [n for n in onnx.load(path).graph.node if n.op_type == "Resize"]
    assert len(resizes) == 2  # one per stride-2 attention block of stage 2
    for node in resizes:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["mode"] == b"linear"
        assert attributes["coordinate_transformation_mode"] in (b"pytorch_half_pixel", b"half_pixel")
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(images).numpy()
    got = OnnxRunner(path, 2)(images.numpy())
    assert got.shape == (3, 1000)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("variant", ["s1", "s2", "l"])
def test_tensorrt_portable_half_for_every_v2_variant(variant: str, tmp_path: Path) -> None:
    """The prepared ONNX (checked against the TensorRT parser's op table at export), the build recipe with the
    attention softmaxes pinned to FP32 under FP16, build_engine.sh and engine.json, for the larger variants too
    (s0 goes through the command line above)."""
    recipe, _ = load_recipe(default_recipe_path("tensorrt"))
    request = ExportRequest(variant=variant, weights=None, seed=0, out_dir=tmp_path, recipe=recipe,
                            recipe_source=str(default_recipe_path("tensorrt")))
    artifact = run_export(request, StageReporter(None)).artifact
    assert {"model.onnx", "build_engine.sh", "engine.json", "manifest.json"} <= {p.name for p in artifact.iterdir()}
    engine = json.loads((artifact / "engine.json").read_text())
    pinned = engine["build_options"]["fp32_layers"]
    softmaxes = json.loads((artifact / MANIFEST_FILE).read_text())["target"]["op_counts"]["Softmax"]
    assert len([layer for layer in pinned if layer.endswith("Softmax")]) == softmaxes > 0


@pytest.mark.parametrize("variant", ["l1", "s0"])
def test_each_family_declares_the_input_sizes_its_model_computes(variant: str) -> None:
    """The declared range is the model's own: both ends run, the size below it does not."""
    from efexport.exporter.stages.load import resolve_variant

    family, name = resolve_variant(variant)
    model = family.build(name).eval()
    low, high = family.image_sizes
    with torch.no_grad():
        for size in (low, high):
            assert model(torch.zeros(1, 3, size, size)).shape == (1, 1000)
            assert family.image_size_problem(size) is None
        with pytest.raises((ValueError, RuntimeError)):
            model(torch.zeros(1, 3, low - 1, low - 1))
    assert family.title in family.image_size_problem(low - 1)


def test_an_image_size_v1_takes_but_v2_does_not_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run_cli("onnx", "--variant", "s0", "--image-size", "200", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "image size 200 is not supported by EfficientFormerV2" in result.stderr and "209-224" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
