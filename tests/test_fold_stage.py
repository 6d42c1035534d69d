"""The fold stage as a pass manager: records per pass, the parity gate after each pass, and `efexport fold`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from efexport.exporter.errors import ExitCode, ParityError
from efexport.exporter.passes import ALL_PASSES, ModelPass, PassResult
from efexport.exporter.recipes import default_recipe_path, load_recipe
from efexport.exporter.stages.fold import fold_model, fold_probe, traced_op_counts, traced_run
from efexport.validate.reference import make_reference_inputs
from tests.helpers import realistic_model, run_cli

PROBE = make_reference_inputs(0, 1, 1)[0]
ONNX_PASSES = list(load_recipe(default_recipe_path("onnx"))[0].fold.passes)


V2_ONLY_PASSES = {"talking-head-bias", "fold-query-pool", "values-first-attention", "fold-head-batchnorm"}
COREML_PASSES = [*(n for n in ONNX_PASSES if n not in {"token-rows-mb3d", "erf-gelu"}), "channels-first-mb3d"]


@pytest.mark.parametrize("passes", [ONNX_PASSES, COREML_PASSES], ids=["onnx", "coreml"])
def test_every_pass_is_recorded_with_measured_numbers(passes: list[str]) -> None:
    model = realistic_model("l1")
    folded = fold_model(model, passes, PROBE, max_abs=1e-5)
    report = folded.report()
    assert [r["name"] for r in report["passes"]] == passes
    v1 = [r for r in report["passes"] if r["name"] not in V2_ONLY_PASSES]
    assert all(r["changed"] and r["rewrites"] > 0 for r in v1)
    # EfficientFormerV2's passes find nothing in V1: recorded as unchanged, the model and its ops as they were
    for r in (r for r in report["passes"] if r["name"] in V2_ONLY_PASSES):
        assert not r["changed"] and r["rewrites"] == 0 and r["ops_before"] == r["ops_after"]
        assert r["stored_values_before"] == r["stored_values_after"]
    assert all(0 < r["max_abs_error"] <= 1e-5 for r in report["passes"])
    assert report["max_abs_gate"] == max(1e-5, 2 * report["float32_noise_floor"])
    assert report["passes"][-1]["ops_after"] < report["passes"][0]["ops_before"]
    assert sum(report["op_counts_after"].values()) == report["passes"][-1]["ops_after"]
    assert "batch_norm" in report["op_counts_before"] and "batch_norm" not in report["op_counts_after"]
    assert report["float32_noise_floor"] > 0
    with torch.no_grad():  # the original is untouched: folding works on a copy
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class _Breaks(ModelPass):
    name = "breaks-parity"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        model.head.bias.add_(1.0)
        return PassResult(changed=True, rewrites=1)


def test_a_pass_that_breaks_parity_stops_the_stage_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ALL_PASSES, _Breaks.name, _Breaks)
    with pytest.raises(ParityError, match="fold pass breaks-parity broke parity"):
        fold_model(realistic_model("l1"), ["fuse-conv-bn", "breaks-parity", "merge-heads"], PROBE, max_abs=1e-4)


def test_fold_command_reports_passes_and_honours_no_pass() -> None:
    result = run_cli("fold", "--variant", "l1", "--no-pass", "merge-heads", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["name"] for r in report["passes"]] == [n for n in ONNX_PASSES if n != "merge-heads"]
    assert report["weights"]["source"] == "random-init" and report["max_abs_allowed"] == 1e-5
    table = run_cli("fold", "--variant", "l1")
    assert table.returncode == 0 and "fuse-conv-bn" in table.stdout and "noise floor" in table.stdout


def test_unknown_pass_name_is_a_bad_input() -> None:
    result = run_cli("fold", "--variant", "l1", "--no-pass", "fuse-everything")
    assert result.returncode == ExitCode.BAD_INPUT and "fuse-everything" in result.stderr


def test_fold_probe_takes_the_first_input_of_each_kind() -> None:
    inputs, kinds = make_reference_inputs(0, 3, 2)
    probe = fold_probe(inputs, kinds)
    assert probe.shape[0] == 2
    assert (probe[0] == inputs[0]).all() and (probe[1] == inputs[3]).all()


def test_one_traced_forward_gives_both_the_outputs_and_the_op_counts() -> None:
    """The fold stage checks each pass and counts its ops from one forward pass; both must be what a plain
    forward and a separate trace give."""
    model = realistic_model("l1").eval()
    probe = torch.from_numpy(PROBE)
    outputs, counts = traced_run(model, probe)
    with torch.no_grad():
        assert torch.equal(outputs, model(probe))
    assert counts == traced_op_counts(model, probe[:1])  # the batch does not change the traced ops
    assert counts["batch_norm"] > 0 and all(p.requires_grad for p in model.parameters())
