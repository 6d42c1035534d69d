from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efexport.exporter.passes import ErfGeluForm, FuseConvBatchNorm
from efexport.exporter.passes.erf_gelu import ErfGelu
from efexport.exporter.stages.fold import traced_op_counts
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(14))


@pytest.mark.parametrize("fuse_first", [False, True], ids=["scale-batchnorm", "scale-fused-conv"])
def test_every_gelu_is_rewritten_and_outputs_hold(fuse_first: bool) -> None:
    model = realistic_model("l1")
    folded = copy.deepcopy(model)
    if fuse_first:
        FuseConvBatchNorm()(folded)
    result = ErfGeluForm()(folded)
    assert result.changed and result.rewrites == 14 + 1  # 14 MB4D MLPs and one MB3D MLP in l1
    assert not any(isinstance(m, nn.GELU) for m in folded.modules())
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5
    ops = traced_op_counts(folded, IMAGES[:1])
    assert "gelu" not in ops and ops["erf"] == 15


def test_erf_form_is_gelu_scaled_exactly_in_float64() -> None:
    x = torch.randn(1000, dtype=torch.float64) * 3
    u = x / 2**0.5
    assert torch.allclose(ErfGelu()(u) / 2**0.5, nn.functional.gelu(x), atol=1e-12)


def test_second_run_changes_nothing() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    ErfGeluForm()(model)
    assert not ErfGeluForm()(model).changed
