from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efexport.exporter.passes import BlendPoolMixer, IncludePadPooling
from efexport.exporter.passes.include_pad_pooling import CorrectedAvgPool
from tests.helpers import error_vs_exact, realistic_model
from tests.helpers_v2 import realistic_model_v2

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(31))


@pytest.mark.parametrize("size", [(56, 56), (49, 49), (7, 12), (1, 1)])
def test_corrected_pool_is_exclude_pad_pooling_in_float64(size: tuple[int, int]) -> None:
    """Corners (4 of 9 positions in the input), edges (6), inside (9), a 1x1 map (1): every divisor."""
    pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    got = CorrectedAvgPool(pool)(x)
    assert torch.allclose(got, pool(x), rtol=0, atol=1e-13)
    include_pad = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)(x)
    assert (include_pad - pool(x)).abs().max() > 0.1  # the two poolings differ where the rewrite must matter


def test_a_strided_window_is_corrected_too() -> None:
    pool = nn.AvgPool2d(5, stride=2, padding=2, count_include_pad=False)
    x = torch.randn(1, 3, 13, 9, dtype=torch.float64)
    assert torch.allclose(CorrectedAvgPool(pool)(x), pool(x), rtol=0, atol=1e-13)


def test_every_v1_token_mixer_is_rewritten_after_the_blend_and_outputs_hold() -> None:
    model = realistic_model("l1")
    folded = copy.deepcopy(model)
    BlendPoolMixer()(folded)
    result = IncludePadPooling()(folded)
    assert result.changed and result.rewrites == 14  # l1's MB4D blocks: 3 + 2 + 6 + 3
    assert not any(isinstance(m, nn.AvgPool2d) and not m.count_include_pad for m in folded.modules())
    assert sum(isinstance(m, CorrectedAvgPool) for m in folded.modules()) == 14
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5
    assert not IncludePadPooling()(folded).changed  # nothing left to rewrite


def test_a_smaller_input_needs_no_other_module() -> None:
    """The correction follows the input's size: one folded model serves every size the family takes."""
    model = realistic_model("l1")
    folded = copy.deepcopy(model)
    IncludePadPooling()(folded)
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES[:1, :, :193, :193]) <= 1e-5


def test_v2_has_no_exclude_pad_pooling_and_is_left_unchanged() -> None:
    model = realistic_model_v2("s0")
    assert IncludePadPooling()(model) == IncludePadPooling()(copy.deepcopy(model))
    assert not IncludePadPooling()(model).changed


def test_a_pooling_without_an_exact_form_is_refused_by_name() -> None:
    model = nn.Sequential(nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=False))
    with pytest.raises(ValueError, match=r"include-pad-pooling: 0 .*ceil_mode"):
        IncludePadPooling()(model)
