from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efexport.exporter.models.efficientformer import LayerScale
from efexport.exporter.passes import FoldLayerScale, FuseConvBatchNorm
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("fuse_first", [False, True], ids=["into-batchnorm", "into-fused-conv"])
def test_folds_mlp_and_attention_scales_and_keeps_outputs(fuse_first: bool) -> None:
    model = realistic_model("l1")
    folded = copy.deepcopy(model)
    if fuse_first:
        FuseConvBatchNorm()(folded)
    result = FoldLayerScale()(folded)
    # l1: 14 MB4D blocks (ls2 each) + 1 MB3D block (ls1 and ls2)
    assert result.changed and result.rewrites == 14 + 2
    remaining = [n for n, m in folded.named_modules() if isinstance(m, LayerScale)]
    assert len(remaining) == 14 and all(n.endswith("ls1") for n in remaining)  # MB4D ls1: blend-pool-mixer's job
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5


def test_scales_land_on_the_right_rows() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    block = model.stages[3].blocks[4]
    gamma1, proj = block.ls1.gamma.detach().clone(), block.token_mixer.proj.weight.detach().clone()
    FoldLayerScale()(model)
    assert isinstance(block.ls1, nn.Identity)
    assert torch.allclose(block.token_mixer.proj.weight, proj * gamma1.view(-1, 1), atol=1e-6)


def test_second_run_changes_nothing() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    FoldLayerScale()(model)
    assert not FoldLayerScale()(model).changed
