"""The Core AI target end to end through the command line, with parity on Apple's Core AI runtime.

* l1 at the shipped recipe's FP16: ``efexport coreai --variant l1 --json`` as a real subprocess; the package, its
  manifest, the asset's own metadata and the model card. (s0 goes through ``efexport all`` in
  tests/test_v2_end_to_end.py.)
* l1 at FP32: the exact gate (max abs <= 1e-4), ``efexport verify``, and verify refusing a changed byte in the
  asset's program and in its metadata.
* l1 without the include-pad-pooling pass: the runtime's pooling defect reaches the parity gate, which refuses
  the package and leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from efexport.exporter.errors import ExitCode
from efexport.exporter.manifest import MANIFEST_FILE
from efexport.exporter.targets.coreai.convert import read_metadata
from tests.helpers import run_cli

pytestmark = pytest.mark.xdist_group("coreai-l1")  # the module's packages are built once, on one worker


def _export(root: Path, *flags: str) -> tuple[Path, dict, dict]:
    result = run_cli("coreai", "--variant", "l1", *flags, "--out", root / "out", "--json", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    package = Path(document["artifact"])
    return package, document, json.loads((package / MANIFEST_FILE).read_text())


@pytest.fixture(scope="module")
def l1_fp16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    return _export(tmp_path_factory.mktemp("coreai-fp16"))


@pytest.fixture(scope="module")
def l1_fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    return _export(tmp_path_factory.mktemp("coreai-fp32"), "--precision", "fp32")


def test_l1_fp16_package_from_the_command_line(l1_fp16: tuple[Path, dict, dict]) -> None:
    package, document, manifest = l1_fp16
    assert package.parent.name == "efficientformer-l1" and package.name == "coreai-fp16"
    assert sorted(p.name for p in package.iterdir()) == ["README.md", "manifest.json", "model.aimodel",
                                                         "reference_io.npz"]
    assert sorted(p.name for p in (package / "model.aimodel").iterdir()) == ["main.hash", "main.mlirb",
                                                                              "metadata.json"]
    assert document["status"] == "ok" and manifest["package"]["name"] == "efficientformer-l1-coreai-fp16"
    target = manifest["target"]
    assert (target["format"], target["precision"], target["model_file"]) == ("coreai", "fp16", "model.aimodel")
    # coreai-opt's cast: the asset takes and returns float16, and nearly every stored value is float16
    interface = target["interface"]
    assert interface["inputs"] == [{"name": "image", "type": "float16 tensor, ImageNet-normalised",
                                    "dtype": "float16", "shape": [1, 3, 224, 224]}]
    assert interface["outputs"][0]["dtype"] == "float16" and interface["outputs"][0]["shape"] == [1, 1000]
    stored = target["storage_types"]
    assert stored["Float16"] > 0.999 * (stored["Float16"] + stored.get("Float32", 0))
    assert target["op_counts"]["conv2d"] > 0 and "sum_pool_2d" in target["op_counts"]


def test_l1_fp16_parity_ran_on_apples_runtime(l1_fp16: tuple[Path, dict, dict]) -> None:
    _, _, manifest = l1_fp16
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["min_cosine"] >= 0.9995 and len(parity["per_input"]) == 8
    assert all(row["top1_agree"] or row["top1_tie"] for row in parity["per_input"])
    runtime = parity["runtime"]
    assert runtime["backend"] == "coreai-runtime"
    release = manifest["versions"]["coreai-core"]
    assert runtime["version"].startswith(f"Apple Core AI runtime from coreai-core {release}")
    assert "Linux reference build" in runtime["version"]
    # the Linux runtime is a reference build: never timed as deployment latency
    assert manifest["latency"] == [] and "reference build" in manifest["latency_note"]
    passes = {p["name"]: p for p in manifest["fold"]["passes"]}
    assert passes["include-pad-pooling"]["changed"] and passes["include-pad-pooling"]["rewrites"] == 14


def test_l1_fp16_asset_metadata_holds_labels_and_the_manifest_facts(l1_fp16: tuple[Path, dict, dict]) -> None:
    package, _, manifest = l1_fp16
    metadata = read_metadata(package / "model.aimodel")  # as coreai-core reads it back
    assert metadata["author"] == "efexport" and metadata["license"].startswith("Apache-2.0")
    assert metadata["description"].startswith("EfficientFormer-l1 ImageNet-1k classifier (fp16, random-init")
    assert metadata["version"] == "1"
    labels = metadata["classLabels"]
    assert len(labels) == 1000 and labels[:2] == ["tench", "goldfish"]
    assert json.loads(metadata["efexport.model"]) == manifest["model"]
    assert json.loads(metadata["efexport.target"])["interface"] == manifest["target"]["interface"]
    assert "efexport.latency" not in metadata  # measured timings stay out of the model file
    stamped = json.loads((package / "model.aimodel" / "metadata.json").read_text())
    assert "creationDate" not in stamped  # the same model gives the same bytes


def test_l1_fp16_model_card(l1_fp16: tuple[Path, dict, dict]) -> None:
    package, _, manifest = l1_fp16
    card = (package / "README.md").read_text()
    assert card.startswith("# EfficientFormer-L1 — Core AI (fp16)")
    assert "Apple's Core AI runtime (coreai-core " in card and "Linux reference build on the CPU" in card
    assert "AIModelAsset.load(\"model.aimodel\")" in card and ".astype(np.float16)" in card
    assert "Tensor input only" in card
    assert manifest["files"]["README.md"]["bytes"] == len(card.encode())


def test_l1_fp32_passes_the_exact_gate_and_verify(l1_fp32: tuple[Path, dict, dict]) -> None:
    package, _, manifest = l1_fp32
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs"] <= 1e-4 and parity["min_cosine"] >= 0.99999
    assert parity["top1_agreement"] == 1.0
    assert manifest["target"]["interface"]["inputs"][0]["dtype"] == "float32"
    result = run_cli("verify", package, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["passed"] and report["parity"]["max_abs"] <= 1e-4
    assert "reference build" in report["not_checked_here"]["coreai"]


@pytest.mark.parametrize("member", ["main.mlirb", "metadata.json"])
def test_verify_refuses_a_changed_byte_in_the_asset(l1_fp32: tuple[Path, dict, dict], tmp_path: Path,
                                                    member: str) -> None:
    package, _, _ = l1_fp32
    copy = shutil.copytree(package, tmp_path / package.name)
    path = copy / "model.aimodel" / member
    data = bytearray(path.read_bytes())
    # the program: a byte in the middle of the weights; the metadata: one letter of its author
    position = len(data) // 2 if member == "main.mlirb" else data.index(b'"efexport"') + 1
    data[position] ^= 0x20
    path.write_bytes(bytes(data))
    result = run_cli("verify", copy, "--json")
    assert result.returncode == ExitCode.VERIFY_FAILED, result.stderr[-3000:]
    problems = json.loads(result.stdout)["problems"]
    assert f"model.aimodel/{member}: sha256 differs from the manifest (modified?)" in problems, problems


def test_without_the_pooling_fold_the_runtime_defect_fails_the_gate(tmp_path: Path) -> None:
    """The straightforward conversion: Core AI's exclude-pad pooling is the include-pad mean, so the logits move
    far past FP32's gate; the export stops at validate and writes nothing."""
    result = run_cli("coreai", "--variant", "l1", "--precision", "fp32", "--no-pass", "include-pad-pooling",
                     "--out", tmp_path / "out", "--json", cwd=tmp_path)
    assert result.returncode == ExitCode.PARITY_FAILED, result.stderr[-3000:]
    error = json.loads(result.stdout)
    assert error["stage"] == "validate" and "parity gate failed" in error["error"] and "max_abs" in error["error"]
    assert not list((tmp_path / "out").rglob("*.aimodel"))
    assert not list((tmp_path / "out").rglob(MANIFEST_FILE))


def test_an_l1_bundle_verifies_and_publishes(l1_fp32: tuple[Path, dict, dict], tmp_path: Path) -> None:
    """Bundle, verify the bundle (Apple's runtime once more) and publish it to a directory registry, whose index
    names the package by its target."""
    package, _, _ = l1_fp32
    bundled = run_cli("bundle", package, "--bundle-dir", tmp_path / "bundles", "--json", cwd=tmp_path)
    assert bundled.returncode == 0, bundled.stderr[-3000:]
    bundle = tmp_path / "bundles" / "efficientformer-l1-coreai-fp32.zip"
    assert bundle.is_file()
    published = run_cli("publish", bundle, "--to", tmp_path / "registry", "--version", "1.0.0",
                        "--allow-random-weights", "--json", cwd=tmp_path)
    assert published.returncode == 0, published.stderr[-3000:]
    index = json.loads((tmp_path / "registry" / "index.json").read_text())
    entry = index["packages"]["efficientformer-l1"]["1.0.0"]["coreai-fp32"]
    assert entry["bundle"].endswith("/efficientformer-l1-coreai-fp32.zip")
