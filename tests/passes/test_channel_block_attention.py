from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from efexport.exporter.models.efficientformer import build_model as build_v1
from efexport.exporter.models.efficientformer_v2 import Attention4D, Attention4DDownsample
from efexport.exporter.passes import ChannelBlockAttention
from efexport.exporter.passes.channel_block_attention import (
    ChannelBlockAttention4D,
    ChannelBlockAttentionDownsample,
    blocked_value_order,
    even_point_selection,
)
from efexport.exporter.recipes import default_recipe_path, load_recipe
from tests.helpers import with_passes
from tests.helpers_v2 import realistic_model_v2

# one image: float64 convolutions are slow on CPU; the float32 test checks a batch of two as well
IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(21))
IMAGE = IMAGES[:1]
# the Core ML recipe's passes before this one (BatchNorms fused, scale and bias folded, the bias carried through
# the talking head, the query's pixel pick in its conv): the pass must read both the plain and the folded forms
OTHER_PASSES = [name for name in load_recipe(default_recipe_path("coreml"))[0].fold.passes
                if name != "channel-block-attention"]


def _attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    kinds = (Attention4D, Attention4DDownsample, ChannelBlockAttention4D, ChannelBlockAttentionDownsample)
    return [m for m in model.modules() if isinstance(m, kinds)]


@pytest.fixture(scope="module")
def s0() -> torch.nn.Module:
    return realistic_model_v2("s0")


@pytest.fixture(scope="module")
def exact(s0: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(s0).double()(IMAGE.double())


@pytest.mark.parametrize("before", [[], OTHER_PASSES], ids=["unfolded", "after-other-passes"])
def test_float64_form_computes_what_the_unfolded_model_does(s0: torch.nn.Module, exact: torch.Tensor,
                                                            before: list[str]) -> None:
    """In float64 the rewrite is exact up to summation order: every fold it makes is algebra, not approximation."""
    folded = with_passes(copy.deepcopy(s0).double(), before)
    result = ChannelBlockAttention()(folded)
    assert result.changed and result.rewrites == 5  # 4 Attention4D (2 in stage 2, 2 in stage 3) + 1 downsample
    assert [type(m) for m in _attentions(folded)] == [ChannelBlockAttention4D] * 2 + [
        ChannelBlockAttentionDownsample] + [ChannelBlockAttention4D] * 2
    with torch.no_grad():
        assert float((folded(IMAGE.double()) - exact).abs().max()) < 1e-9
    assert not ChannelBlockAttention()(folded).changed


def test_float32_form_passes_the_fold_gate(s0: torch.nn.Module, exact: torch.Tensor) -> None:
    """The fold stage's rule: max(1e-5, twice the unfolded model's own float32 error) against float64; and the
    rewritten attention takes any batch (its reshapes keep the batch axis as -1)."""
    folded = with_passes(s0, [*OTHER_PASSES, "channel-block-attention"])
    with torch.no_grad():
        own = float((s0(IMAGE).double() - exact).abs().max())
        error = float((folded(IMAGE).double() - exact).abs().max())
        batch = folded(IMAGES)
    assert error <= max(1e-5, 2 * own)
    torch.testing.assert_close(batch[:1], folded(IMAGE), rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1:], folded(IMAGES[1:]), rtol=0, atol=1e-5)


def test_value_channels_move_into_head_parts() -> None:
    """2 heads of 4 values in parts of 2: part j of head h is block j * heads + h."""
    order = blocked_value_order(heads=2, key_dim=2, val_dim=4)
    # blocks: (part 0, head 0) = channels 0, 1; (part 0, head 1) = 4, 5; (part 1, head 0) = 2, 3; (part 1, head 1)
    assert order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7]


def test_even_points_are_the_stride_two_pixels() -> None:
    """The selection matmul picks what a stride-2 pick of the grid gives, in row-major token order."""
    grid = torch.randn(1, 3, 14, 14, generator=torch.Generator().manual_seed(2))
    picked = grid.reshape(1, 3, 196) @ even_point_selection(14, torch.float32)
    assert torch.equal(picked, F.avg_pool2d(grid, 1, stride=2).reshape(1, 3, 49))


def test_other_models_are_left_alone() -> None:
    model = build_v1("l1").eval()
    before = copy.deepcopy(model.state_dict())
    assert not ChannelBlockAttention()(model).changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
