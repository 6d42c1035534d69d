"""The precision axis (exporter/precisions.py): recipes take its values, a precision that needs a stage it does not
have is refused by name, and a precision's graph stage runs between capture and export on the real pipeline."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

from efexport.exporter import precisions
from efexport.exporter.errors import ParityError, RecipeError
from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
from efexport.exporter.recipes import Recipe, apply_overrides
from efexport.exporter.stages.capture import CapturedGraph


def test_recipes_take_the_registered_precisions() -> None:
    field = Recipe.model_fields["precision"]
    assert set(typing.get_args(field.annotation)) == set(precisions.PRECISIONS)


def test_a_target_refuses_a_precision_it_does_not_list(fast_recipe: Recipe) -> None:
    passes = precisions.passes_for("int8", list(fast_recipe.fold.passes))
    assert "carry-mixer-scale" in fast_recipe.fold.passes and "carry-mixer-scale" not in passes
    assert apply_overrides(fast_recipe, {"precision": "int8", "fold.passes": passes}).precision == "int8"
    assert precisions.PRECISIONS["int8"].needs_calibration
    with pytest.raises(RecipeError, match="keep carry-mixer-scale out of int8 exports: it stores residual-stream"):
        apply_overrides(fast_recipe, {"precision": "int8"})  # a recipe that lists a pass its precision refuses
    with pytest.raises(RecipeError, match="precision: the onnx target exports fp32, int8, not fp16"):
        apply_overrides(fast_recipe, {"precision": "fp16"})


def negated(captured: CapturedGraph, recipe: Recipe) -> CapturedGraph:
    """A stage that changes what the model computes: whatever follows it must see its graph, not the capture's."""
    module = captured.program.module()

    class Negate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -module(x)

    program = torch.export.export(Negate(), (captured.example,), strict=False)
    return captured.with_program(program)


def test_a_precision_stage_runs_between_capture_and_export(fast_recipe: Recipe, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    staged = dataclasses.replace(precisions.PRECISIONS["fp32"], stage=f"{__name__}:negated")
    monkeypatch.setitem(precisions.PRECISIONS, "fp32", staged)
    reporter = StageReporter(None)
    request = ExportRequest(variant="l1", weights=None, seed=0, out_dir=tmp_path, recipe=fast_recipe,
                            recipe_source="onnx.toml")
    with pytest.raises(ParityError, match="parity gate failed") as failed:
        run_export(request, reporter)
    assert failed.value.stage == "validate"  # the exported model is the stage's (negated) graph
    assert list(reporter.seconds) == ["load", "reference", "fold", "capture", "precision", "export"]
    assert list(tmp_path.iterdir()) == []  # nothing half-written
