"""The capture stage: one ``torch.export`` capture of the folded model, handed to every target.

Checked here: the capture is an ExportedProgram that computes what the eager folded model computes; a dynamic
batch is really dynamic (and a static one really static); a capture that bakes Python state into the graph is
refused; the program is made only when something asks for it; the ONNX target converts the ExportedProgram with
the dynamo exporter from opset 18, and a TorchScript trace below 18 (of the program when one exists, else of
the eager folded model); and the manifest of each target's package records the method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.export import ExportedProgram

from efexport.exporter.recipes import default_recipe_path, load_recipe
from efexport.exporter.stages.capture import EXPORT, TRACE, CapturedGraph, CaptureError, capture
from efexport.exporter.targets.onnx.export import DYNAMO_MIN_OPSET, OnnxRunner, export_onnx
from tests.helpers import realistic_model, with_passes
from tests.packages import exported_package


@pytest.fixture(scope="module")
def folded_l1() -> nn.Module:
    """l1 with realistic weights and the shipped ONNX recipe's fold passes (the model the ONNX target captures)."""
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    return with_passes(realistic_model("l1"), list(recipe.fold.passes)).eval()


@pytest.fixture(scope="module")
def dynamic_capture(folded_l1: nn.Module) -> CapturedGraph:
    return capture(folded_l1, 224, 1000, dynamic_batch=True)


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_capture_is_an_exported_program_that_matches_eager(folded_l1: nn.Module) -> None:
    captured = capture(folded_l1, 224, 1000, dynamic_batch=False)
    assert isinstance(captured.program, ExportedProgram)
    assert captured.method == EXPORT and "reason" not in captured.describe()  # no trace made at capture
    assert "max abs 0 " in captured.describe()["exported_program"]
    assert captured.inputs[0].shape == (1, 3, 224, 224) and captured.outputs[0].shape == (1, 1000)
    x = images(1, seed=7)  # not the example the capture was checked on
    expected = folded_l1(x)
    # the same ATen kernels on the same shapes: bit-identical on torch 2.13, within the stage's tolerance anyway
    assert (captured.program.module()(x) - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert 0 <= captured.max_abs_vs_eager <= 1e-6 * expected.abs().max()
    with pytest.raises(AssertionError, match=r"Guard failed: .*size\(\)\[0\] == 1"):  # static: batch 1 only
        captured.program.module()(images(3, seed=7))


@torch.no_grad()
def test_dynamic_batch_runs_batch_three_through_the_captured_program(folded_l1: nn.Module,
                                                                   dynamic_capture: CapturedGraph) -> None:
    assert dynamic_capture.dynamic_batch and dynamic_capture.inputs[0].shape[0] == "batch"
    x = images(3, seed=11)
    got, expected = dynamic_capture.program.module()(x), folded_l1(x)
    assert got.shape == (3, 1000)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


class ExportOnlyPath(nn.Module):
    """Takes another path while being exported (``torch.compiler.is_exporting()``, as some model code does to work
    around an exporter): the captured program then computes something the eager model does not."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x.mean(dim=(2, 3)))
        return logits * 2 if torch.compiler.is_exporting() else logits


def test_a_capture_that_differs_from_its_model_is_refused() -> None:
    with pytest.raises(CaptureError, match="differs from the model it captured"):
        _ = capture(ExportOnlyPath(), 224, 1000, dynamic_batch=False).program


class TinyHead(nn.Module):
    """A stand-in classifier for the capture's bookkeeping (no EfficientFormer needed to test it)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


@torch.no_grad()
def test_a_replaced_program_is_traced_afresh() -> None:
    """A stage between capture and export (a precision stage) replaces the program: the trace a target then asks
    for must be of the new program, never one made of the old."""
    captured = capture(TinyHead(), 224, 10, dynamic_batch=False)
    original = captured.traced("opset 17")(captured.example)
    assert captured.method == TRACE and "eager folded model" in captured.describe()["trace"]
    negated = torch.export.export(Negate(captured.program.module()), (captured.example,), strict=False)
    replaced = captured.with_program(negated)
    assert replaced.method == EXPORT and "reason" not in replaced.describe()
    assert torch.equal(replaced.traced("opset 17")(captured.example), -original)
    assert "captured program" in replaced.describe()["trace"]
    assert replaced.describe()["exported_program"].endswith("a stage's rewrite of the capture")


@torch.no_grad()
def test_the_program_is_made_only_when_asked_for() -> None:
    """A target that converts a trace (ONNX below opset 18) does not pay for torch.export; the first one that
    wants the program gets it, checked, and the manifest then says so."""
    captured = capture(TinyHead(), 224, 10, dynamic_batch=True)
    assert captured._program is None and "exported_program" not in captured.describe()
    program = captured.program
    assert captured.program is program  # made once
    assert captured.describe()["exported_program"].startswith("torch.export.export (non-strict), batch dynamic")


class Negate(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.inner(x)


def test_onnx_path_follows_the_opset(folded_l1: nn.Module, dynamic_capture: CapturedGraph, tmp_path: Path) -> None:
    """Opset 18: the dynamo exporter on the ExportedProgram, no trace made; opset 17: the TorchScript exporter on
    a trace of the same program. Both give the folded graph's 162 nodes and compute the model at batch 3."""
    x = images(3, seed=5)
    with torch.no_grad():
        expected = folded_l1(x).numpy()
    recorded = {}
    for opset in (DYNAMO_MIN_OPSET, DYNAMO_MIN_OPSET - 1):  # 18 first: the trace, once made, is what is recorded
        path = tmp_path / f"opset{opset}.onnx"
        exported = export_onnx(dynamic_capture, path, opset, "onnxsim")
        recorded[opset] = exported.capture, dynamic_capture.method
        model = onnx.load(path)
        assert model.opset_import[0].version == opset
        assert sum(exported.op_counts.values()) == 162
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert not any(node.metadata_props for node in model.graph.node)  # no stack traces with local paths
        assert np.abs(OnnxRunner(path, 2)(x.numpy()) - expected).max() <= 1e-4
    assert recorded == {18: (EXPORT, EXPORT), 17: (TRACE, TRACE)}
    assert "opset 17" in dynamic_capture.describe()["reason"]


@pytest.mark.xdist_group("l1-packages")  # the shared l1 packages, exported once on one worker
@pytest.mark.parametrize(("target", "method"), [("onnx", TRACE), ("tensorrt", TRACE), ("coreml", EXPORT)])
def test_manifest_records_the_capture_method(tmp_path_factory: pytest.TempPathFactory, target: str,
                                             method: str) -> None:
    """The shipped recipes: ONNX and TensorRT at opset 17 (a trace of the eager folded model, no ExportedProgram
    made), Core ML from the ExportedProgram."""
    _, manifest = exported_package(target, tmp_path_factory)
    facts = manifest["capture"]
    assert facts["method"] == method and facts["torch_version"] == torch.__version__
    converted_from = "trace" if method == TRACE else "exported_program"
    assert "max abs 0 " in facts[converted_from]  # measured bit-identical to the eager folded model
    assert ("reason" in facts) == (method == TRACE)
    assert ("exported_program" in facts) == (method == EXPORT)  # no torch.export for a trace's sake
