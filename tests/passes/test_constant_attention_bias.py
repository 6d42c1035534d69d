from __future__ import annotations

import copy

import torch

from efexport.exporter.models.efficientformer import Attention
from efexport.exporter.passes import ConstantAttentionBias
from tests.helpers import realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(8))


def test_bias_becomes_one_constant_and_outputs_are_identical() -> None:
    model = realistic_model("l3")
    folded = copy.deepcopy(model)
    result = ConstantAttentionBias()(folded)
    attentions = [m for m in folded.modules() if isinstance(m, Attention)]
    assert result.changed and result.rewrites == len(attentions) == 4
    for attn in attentions:
        assert attn.attention_bias is not None and attn.attention_bias.shape == (8, 49, 49)
        assert "attention_biases" not in dict(attn.named_parameters())
    with torch.no_grad():
        assert torch.equal(folded(IMAGES), model(IMAGES))


def test_constant_is_exported_without_gather() -> None:
    folded = copy.deepcopy(realistic_model("l1"))
    ConstantAttentionBias()(folded)
    traced = torch.jit.trace(folded, IMAGES[:1], check_trace=False)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::index" not in kinds
    assert "aten::index" in {n.kind() for n in torch.jit.trace(realistic_model("l1"), IMAGES[:1],
                                                               check_trace=False).inlined_graph.nodes()}


def test_second_run_changes_nothing() -> None:
    folded = copy.deepcopy(realistic_model("l1"))
    ConstantAttentionBias()(folded)
    assert not ConstantAttentionBias()(folded).changed
