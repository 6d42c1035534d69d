from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efexport.exporter.passes import FuseConvBatchNorm
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))


# stem 2 + downsamples 3 + two per MB4D block (depths minus the MB3D blocks)
@pytest.mark.parametrize(("variant", "pairs"), [("l1", 5 + 2 * (3 + 2 + 6 + 3)), ("l3", 5 + 2 * (4 + 4 + 12 + 2))])
def test_fuses_every_declared_pair_and_keeps_outputs(variant: str, pairs: int) -> None:
    model = realistic_model(variant)
    folded = copy.deepcopy(model)
    result = FuseConvBatchNorm()(folded)
    assert result.changed and result.rewrites == pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5


def test_second_run_changes_nothing() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    FuseConvBatchNorm()(model)
    again = FuseConvBatchNorm()(model)
    assert not again.changed and again.rewrites == 0


def test_fused_conv_matches_conv_then_bn_exactly_in_float64() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1).double(), nn.BatchNorm2d(6).double()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()

    class Pair(nn.Module):
        conv_bn_pairs = (("conv", "bn"),)

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = conv, bn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

    pair = Pair().eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = pair(x)
        FuseConvBatchNorm()(pair)
        got = pair(x)
    assert isinstance(pair.bn, nn.Identity)
    assert torch.allclose(got, expected, atol=1e-12)
