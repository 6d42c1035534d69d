from __future__ import annotations

import copy

import torch

from efexport.exporter.models.efficientformer import Attention
from efexport.exporter.passes import FoldAttentionScale
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(11))


def test_scale_moves_into_query_rows_only() -> None:
    model = realistic_model("l3")
    folded = copy.deepcopy(model)
    result = FoldAttentionScale()(folded)
    assert result.changed and result.rewrites == 4
    for before, after in zip((m for m in model.modules() if isinstance(m, Attention)),
                             (m for m in folded.modules() if isinstance(m, Attention)), strict=True):
        assert after.scale == 1.0
        ratio = (after.qkv.weight / before.qkv.weight).view(8, 192, -1)
        assert torch.allclose(ratio[:, :32], torch.full_like(ratio[:, :32], 32**-0.5), atol=1e-6)  # q
        assert torch.allclose(ratio[:, 32:], torch.ones_like(ratio[:, 32:]))  # k and v untouched
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5


def test_second_run_changes_nothing() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    FoldAttentionScale()(model)
    assert not FoldAttentionScale()(model).changed
