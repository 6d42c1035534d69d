"""Manifests that cannot lie about their model (exporter/embedded_facts.py): an edited manifest.json that claims
other weights, variant, precision or preprocessing than the model carries, or calls deployable a package whose
model's facts say it is not, fails verify naming the fact and both values; a damaged or stripped model is a
problem, not a crash.

Each edit is schema-valid (asserted), so the file table and the schema pass it: before the cross-check these
packages verified. Most cases call ``embedded_fact_problems`` directly on the shared package (it only reads);
verify itself runs on copies of the ONNX, TensorRT and Core AI packages (Core ML's reference interpreter takes
~40 s a run here), and once through the CLI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from efexport.exporter.embedded_facts import embedded_fact_problems
from efexport.exporter.errors import ExitCode
from efexport.exporter.manifest import MANIFEST_FILE
from efexport.exporter.manifest_model import Manifest
from efexport.exporter.manifest_schema import typed_or_problems
from efexport.exporter.targets import TARGETS as TARGETS_BY_NAME
from efexport.exporter.verify import verify_package
from tests.helpers import run_cli
from tests.packages import TARGETS, exported_package

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

OTHER_SHA256 = "ab" * 32
OTHER_PRECISION = {"onnx": "int8", "coreml": "fp32", "tensorrt": "fp32", "coreai": "fp16"}


def claim_checkpoint(m: dict, target: str) -> None:
    """Other weights: a checkpoint (with its sha256) where the model holds random-init ones."""
    m["weights"] = {"source": "checkpoint", "file": "efficientformer_l1.pth", "sha256": OTHER_SHA256,
                    "format": "pth", "layout": "upstream"}


def claim_variant(m: dict, target: str) -> None:
    m["model"]["variant"] = "l3"
    m["package"]["name"] = m["package"]["name"].replace("-l1-", "-l3-")


def claim_precision(m: dict, target: str) -> None:
    old, new = m["target"]["precision"], OTHER_PRECISION[target]
    m["target"]["precision"] = m["recipe"]["values"]["precision"] = new
    m["package"]["name"] = m["package"]["name"].removesuffix(f"-{old}") + f"-{new}"


def claim_mean(m: dict, target: str) -> None:
    m["preprocessing"]["mean"] = [0.5, 0.5, 0.5]


def claim_deployable(m: dict, target: str) -> None:
    """Deployable, with checkpoint weights (and for TensorRT an engine) so that the schema's own rules (random-init
    weights, no engine: never deployable) do not see it."""
    claim_checkpoint(m, target)
    m["package"].update(deployable=True, not_deployable_because=[])
    if target == "tensorrt" and not m["target"]["engine"]["built"]:
        m["target"]["engine"] = {"built": True, "plan_file": "model.plan", "sha256": OTHER_SHA256,
                                 "timing_cache_sha256": OTHER_SHA256, "tensorrt": "10.0.0"}


# edit, the fact a problem must name, and the value the manifest then states there
EDITS: dict[str, tuple[Callable[[dict, str], None], str, Callable[[str], object]]] = {
    "weights": (claim_checkpoint, "weights.sha256", lambda target: OTHER_SHA256),
    "variant": (claim_variant, "model.variant", lambda target: "l3"),
    "precision": (claim_precision, "target.precision", lambda target: OTHER_PRECISION[target]),
    "preprocessing": (claim_mean, "preprocessing.mean", lambda target: [0.5, 0.5, 0.5]),
    "deployable": (claim_deployable, "package.deployable", lambda target: True),
}


def edited(manifest: dict, target: str, edit: Callable[[dict, str], None]) -> dict:
    edit(manifest, target)
    return manifest


def typed(manifest: dict) -> Manifest:
    result, problems = typed_or_problems(manifest)
    assert result is not None, problems  # the edit is schema-valid: only the cross-check can catch it
    return result


def naming(problems: list[str] | tuple[str, ...], fact: str) -> list[str]:
    return [p for p in problems if p.startswith(f"manifest vs model: {fact}: ")]


@pytest.mark.parametrize("target", TARGETS)
def test_an_untouched_package_agrees_with_its_model(target: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path, manifest = exported_package(target, tmp_path_factory)
    assert embedded_fact_problems(path, typed(manifest)) == []


@pytest.mark.parametrize("target", ["onnx", "coreml"])
def test_the_wire_reader_reads_what_the_libraries_read(target: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The protobuf bytes read without onnx or coremltools give the entries the libraries give."""
    path, manifest = exported_package(target, tmp_path_factory)
    model = path / manifest["target"]["model_file"]
    if target == "onnx":
        expected = {p.key: p.value for p in onnx.load(model, load_external_data=False).metadata_props}
    else:
        from efexport.exporter.targets.coreml.convert import read_metadata

        expected = {k: v for k, v in read_metadata(model).items() if k not in ("author", "license", "version",
                                                                                "description")}
    (source,) = TARGETS_BY_NAME[target].embedded_entries(path, manifest["target"]["model_file"])
    assert source.entries == expected
    assert "efexport.weights" in expected


@pytest.mark.parametrize("case", EDITS)
@pytest.mark.parametrize("target", TARGETS)
def test_a_manifest_claiming_what_the_model_does_not_carry_is_caught(
        target: str, case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path, manifest = exported_package(target, tmp_path_factory)
    edit, fact, value = EDITS[case]
    problems = embedded_fact_problems(path, typed(edited(manifest, target, edit)))
    named = naming(problems, fact)
    assert named, problems
    assert f"manifest.json says {json.dumps(value(target))}" in named[0]
    original = exported_package(target, tmp_path_factory)[1]
    if case in ("variant", "precision", "preprocessing"):  # the model's own value is named beside it
        held = {"variant": original["model"]["variant"], "precision": original["target"]["precision"],
                "preprocessing": original["preprocessing"]["mean"]}[case]
        assert named[0].endswith(f" says {json.dumps(held)}"), named[0]
    if case == "deployable":  # derived again from the model's facts: random-init weights (and no engine)
        derived = [p for p in named if "make it not deployable: random-init weights" in p]
        assert derived, named
        if target == "tensorrt" and not original["target"]["engine"]["built"]:
            assert "no TensorRT engine was built" in derived[0]
            assert naming(problems, "target.engine.built")
    if target == "tensorrt" and case in ("weights", "variant", "preprocessing"):  # both places disagree
        assert any(", model.onnx (metadata_props) says " in p for p in named), named
        assert any(", engine.json says " in p for p in named), named


def _copy(target: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Path, dict]:
    source, manifest = exported_package(target, tmp_path_factory)
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    return copy, manifest


def _write_manifest(package: Path, manifest: dict) -> None:
    (package / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.mark.parametrize(("target", "case"), [("onnx", "weights"), ("tensorrt", "precision"), ("coreai", "variant")])
def test_verify_fails_on_an_edited_manifest(target: str, case: str, tmp_path_factory: pytest.TempPathFactory,
                                            tmp_path: Path) -> None:
    package, manifest = _copy(target, tmp_path_factory, tmp_path)
    edit, fact, _ = EDITS[case]
    _write_manifest(package, edited(manifest, target, edit))
    report = verify_package(package)
    assert not report.passed
    assert naming(report.problems, fact), report.problems
    assert not [p for p in report.problems if "sha256 differs" in p]  # the file table saw nothing


def test_verify_names_the_schema_rule_for_deployable_random_weights(tmp_path_factory: pytest.TempPathFactory,
                                                                    tmp_path: Path) -> None:
    """deployable: true on the random-init weights it really has: the schema's rule refuses it."""
    package, manifest = _copy("onnx", tmp_path_factory, tmp_path)
    manifest["package"].update(deployable=True, not_deployable_because=[])
    _write_manifest(package, manifest)
    report = verify_package(package)
    assert not report.passed
    assert any("package/deployable" in p for p in report.problems), report.problems


def test_the_cli_exits_6_naming_the_fact(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    package, manifest = _copy("onnx", tmp_path_factory, tmp_path)
    _write_manifest(package, edited(manifest, "onnx", claim_deployable))
    result = run_cli("verify", package, "--json")
    assert result.returncode == ExitCode.VERIFY_FAILED, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert naming(report["problems"], "weights.sha256"), report["problems"]
    assert naming(report["problems"], "package.deployable"), report["problems"]


# -------------------------------------------------------------------------- damaged, stripped or doubled metadata


def test_a_truncated_model_is_a_problem_not_a_crash(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    package, manifest = _copy("onnx", tmp_path_factory, tmp_path)
    model = package / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    (problem,) = embedded_fact_problems(package, typed(manifest))
    assert problem.startswith("embedded facts: cannot read the facts model.onnx carries"), problem
    model.write_bytes(b"")
    assert embedded_fact_problems(package, typed(manifest))[0].startswith("embedded facts: cannot read")


def _rewrite_metadata(model: Path, change: Callable[[onnx.ModelProto], None]) -> None:
    proto = onnx.load(model)
    change(proto)
    onnx.save(proto, model)


def test_stripped_or_doubled_onnx_metadata_is_a_problem(tmp_path_factory: pytest.TempPathFactory,
                                                        tmp_path: Path) -> None:
    package, manifest = _copy("onnx", tmp_path_factory, tmp_path)
    model = package / "model.onnx"
    _rewrite_metadata(model, lambda proto: proto.metadata_props.add(key="efexport.weights",
                                                                      value='{"seed": 1, "source": "random-init"}'))
    (problem,) = embedded_fact_problems(package, typed(manifest))
    assert "'efexport.weights' is given twice" in problem, problem
    _rewrite_metadata(model, lambda proto: proto.ClearField("metadata_props"))
    (problem,) = embedded_fact_problems(package, typed(manifest))
    assert "carries none of efexport's facts" in problem, problem


def test_the_engine_sidecar_is_checked_too(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    package, manifest = _copy("tensorrt", tmp_path_factory, tmp_path)
    sidecar = json.loads((package / "engine.json").read_text())
    sidecar["model"]["weights"]["seed"] = 7
    (package / "engine.json").write_text(json.dumps(sidecar))
    (problem,) = embedded_fact_problems(package, typed(manifest))
    assert problem == "manifest vs model: weights.seed: manifest.json says 0, engine.json says 7"


def test_a_core_ml_package_without_a_readable_root_model_is_a_problem(tmp_path_factory: pytest.TempPathFactory,
                                                                      tmp_path: Path) -> None:
    package, manifest = _copy("coreml", tmp_path_factory, tmp_path)
    listing = package / "model.mlpackage" / "Manifest.json"
    items = json.loads(listing.read_text())
    root = items["rootModelIdentifier"]
    items["itemInfoEntries"][root]["path"] = "../../../manifest.json"
    listing.write_text(json.dumps(items))
    (problem,) = embedded_fact_problems(package, typed(manifest))
    assert "is not inside the package" in problem, problem
    listing.write_text("{")
    assert embedded_fact_problems(package, typed(manifest))[0].startswith("embedded facts: cannot read")


def test_core_ai_metadata_that_is_not_json_is_a_problem(tmp_path_factory: pytest.TempPathFactory,
                                                        tmp_path: Path) -> None:
    package, manifest = _copy("coreai", tmp_path_factory, tmp_path)
    (package / "model.aimodel" / "metadata.json").write_text('{"creatorDefinedMetadata": [')
    (problem,) = embedded_fact_problems(package, typed(manifest))
    assert problem.startswith("embedded facts: cannot read the facts model.aimodel carries"), problem
