from __future__ import annotations

import copy

import torch
from torch import nn

from efexport.exporter.models.efficientformer import MetaBlock4d
from efexport.exporter.passes import BlendPoolMixer
from efexport.exporter.passes.blend_pool_mixer import PoolBlend
from efexport.exporter.stages.fold import traced_op_counts
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(10))


def test_every_mb4d_mixer_becomes_a_blend_and_outputs_hold() -> None:
    model = realistic_model("l1")
    folded = copy.deepcopy(model)
    result = BlendPoolMixer()(folded)
    blocks = [m for m in folded.modules() if isinstance(m, MetaBlock4d)]
    assert result.changed and result.rewrites == len(blocks) == 14
    assert all(isinstance(b.token_mixer, PoolBlend) and isinstance(b.ls1, nn.Identity) for b in blocks)
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5
    before, after = traced_op_counts(model, IMAGES[:1]), traced_op_counts(folded, IMAGES[:1])
    assert after.get("sub", 0) == before["sub"] - 14  # no Sub left from the mixers


def test_blend_matches_the_block_formula_exactly_in_float64() -> None:
    block = copy.deepcopy(realistic_model("l1").stages[0].blocks[0]).double()
    x = torch.randn(2, 48, 56, 56, dtype=torch.float64)
    with torch.no_grad():
        gamma = block.ls1.gamma.view(-1, 1, 1)
        expected = x + gamma * (block.token_mixer.pool(x) - x)
        BlendPoolMixer()(block)
        got = block.token_mixer(x)
    assert torch.allclose(got, expected, atol=1e-12)


def test_second_run_changes_nothing() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    BlendPoolMixer()(model)
    assert not BlendPoolMixer()(model).changed
