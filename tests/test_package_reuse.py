"""The package stage's verification reuses the validate stage's parity run where the packaged model computes
what the validated one did, and still catches a model or reference changed between writing and packaging.

``model_digest`` is tested on a small hand-built ONNX model; the pipeline tests export l1 without fold passes
and on one input of each kind, so they spend their time on what is tested here."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from efexport.exporter import pipeline, verify
from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import REFERENCE_FILE
from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
from efexport.exporter.recipes import Recipe, apply_overrides
from efexport.exporter.runtimes import model_digest
from efexport.exporter.targets.onnx.export import set_metadata
from efexport.exporter.verify import ValidatedRun, verify_artifact
from efexport.validate.reference import ReferenceSet


def _small_model(path: Path, weight: float = 0.5) -> Path:
    w = numpy_helper.from_array(np.full((4, 3), weight, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_model_digest_passes_over_inert_metadata_only(tmp_path: Path) -> None:
    path = _small_model(tmp_path / "model.onnx")
    digest = model_digest(path)
    assert digest is not None and len(digest) == 64
    set_metadata(path, {"onnxsim.constant_folding": "true"})  # onnxsim's record, as the export writes it
    assert model_digest(path) == digest
    set_metadata(path, {"efexport.parity": '{"passed": true}', "efexport.model": "{}"})  # as the package embeds it
    assert model_digest(path) == digest
    set_metadata(path, {"efexport.parity": "other facts"})
    assert model_digest(path) == digest
    assert model_digest(_small_model(tmp_path / "other.onnx", weight=0.25)) != digest  # another weight
    set_metadata(path, {"ort_config": "{}"})  # a key ONNX Runtime may act on: no digest, so the model is run
    assert model_digest(path) is None


def test_model_digest_is_none_where_it_cannot_tell(tmp_path: Path) -> None:
    model = onnx.load(_small_model(tmp_path / "model.onnx"))
    onnx.save(model, tmp_path / "external.onnx", save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # weights in another file: not covered by the file's bytes
    assert model_digest(tmp_path / "external.onnx") is None
    data = (tmp_path / "model.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[:-3])
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "model.bin").write_bytes(data)
    for name in ("truncated.onnx", "empty.onnx", "model.bin", "missing.onnx"):
        assert model_digest(tmp_path / name) is None, name


def test_validated_outputs_are_reused_only_for_the_same_model_and_inputs(tmp_path: Path) -> None:
    path = _small_model(tmp_path / "model.onnx")
    inputs = np.ones((2, 1, 4), dtype=np.float32)
    run = ValidatedRun(model_digest(path), inputs, ("noise", "image"), np.zeros((2, 3), dtype=np.float32))
    same = ReferenceSet(inputs.copy(), ("noise", "image"), np.zeros((2, 3), dtype=np.float32))
    assert run.outputs_for(path, same) is run.outputs
    assert run.outputs_for(path, ReferenceSet(inputs + 1, same.kinds, same.outputs)) is None
    assert run.outputs_for(path, ReferenceSet(inputs, ("image", "noise"), same.outputs)) is None
    assert run.outputs_for(_small_model(tmp_path / "other.onnx", weight=0.25), same) is None


@pytest.fixture()
def small_recipe(fast_recipe: Recipe) -> Recipe:
    return apply_overrides(fast_recipe, {"fold.passes": [], "parity.noise_inputs": 1, "parity.image_inputs": 1})


def _export(recipe: Recipe, out: Path) -> Path:
    request = ExportRequest(variant="l1", weights=None, seed=0, out_dir=out, recipe=recipe, recipe_source="tests")
    return run_export(request, StageReporter(None)).artifact


@pytest.fixture()
def parity_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What verification runs in its child process (one entry per model run), in order."""
    runs: list[str] = []
    isolated = verify.outputs_isolated

    def counted(run, inputs, what):
        runs.append(what)
        return isolated(run, inputs, what)

    monkeypatch.setattr(verify, "outputs_isolated", counted)
    return runs


def _between_validate_and_package(monkeypatch: pytest.MonkeyPatch, change) -> None:
    """Run ``change(staging)`` in the benchmark stage: after the validate stage, before the package stage."""
    staged, measure = pipeline.staged_output, pipeline.measure_latency
    places: list[Path] = []

    @contextlib.contextmanager
    def recorded(final: Path, force: bool):
        with staged(final, force) as staging:
            places.append(staging)
            yield staging

    def measure_then_change(runner, recipe, reference):
        reports = measure(runner, recipe, reference)
        change(places[-1])
        return reports

    monkeypatch.setattr(pipeline, "staged_output", recorded)
    monkeypatch.setattr(pipeline, "measure_latency", measure_then_change)


def test_package_verification_reuses_the_validated_run(tmp_path: Path, small_recipe: Recipe,
                                                       parity_runs: list[str]) -> None:
    artifact = _export(small_recipe, tmp_path)
    assert parity_runs == []  # the packaged model.onnx is the validated one plus metadata: not run again
    report = verify_artifact(artifact)  # verify as a user runs it: the model is run
    assert report.passed and report.parity is not None and len(parity_runs) == 1


def test_a_model_changed_between_writing_and_packaging_still_fails(tmp_path: Path, small_recipe: Recipe,
                                                                   parity_runs: list[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def change_a_weight(staging: Path) -> None:
        model = onnx.load(staging / "model.onnx")
        weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
        onnx.save(model, staging / "model.onnx")

    _between_validate_and_package(monkeypatch, change_a_weight)
    with pytest.raises(VerifyError, match="failed its own verification: parity: input 0"):
        _export(small_recipe, tmp_path)
    assert len(parity_runs) == 1  # the changed model was run, not taken for the validated one
    assert not (tmp_path / "efficientformer-l1" / "onnx-fp32").exists()


def test_a_reference_changed_between_writing_and_packaging_still_fails(tmp_path: Path, small_recipe: Recipe,
                                                                       parity_runs: list[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def change_an_output(staging: Path) -> None:
        reference = ReferenceSet.load(staging / REFERENCE_FILE)
        reference.outputs[1, 0] += 1.0
        reference.save(staging / REFERENCE_FILE)

    _between_validate_and_package(monkeypatch, change_an_output)
    with pytest.raises(VerifyError, match=r"failed its own verification: parity: input 1 \(image\)"):
        _export(small_recipe, tmp_path)
    assert parity_runs == []  # same model, same inputs: the validated outputs, compared with the changed file
    assert not (tmp_path / "efficientformer-l1" / "onnx-fp32").exists()
