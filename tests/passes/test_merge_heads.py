from __future__ import annotations

import copy

import torch

from efexport.exporter.passes import MergeHeads
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(12))


def test_one_head_on_a_plain_norm_computes_the_average() -> None:
    model = realistic_model("l1")
    folded = copy.deepcopy(model)
    result = MergeHeads()(folded)
    assert result.changed and folded.head_dist is None and not folded.norm.elementwise_affine
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in model.parameters()) - 1000 * 449 \
        - 2 * 448


def test_exact_in_float64() -> None:
    model = copy.deepcopy(realistic_model("l1")).double()
    x = IMAGES.double()
    with torch.no_grad():
        expected = model(x)
        MergeHeads()(model)
        assert torch.allclose(model(x), expected, atol=1e-10)


def test_second_run_changes_nothing() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    MergeHeads()(model)
    assert not MergeHeads()(model).changed
