"""Gather the attention bias once, at export time, into a constant."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import Attention
from efexport.exporter.passes.base import ModelPass, PassResult


def _gathers_bias(module: nn.Module) -> bool:
    if isinstance(module, Attention):
        return module.attention_bias is None
    return (getattr(module, "attention_bias", 0) is None and callable(getattr(module, "bias", None))
            and isinstance(getattr(module, "attention_biases", None), nn.Parameter))


class ConstantAttentionBias(ModelPass):
    """The relative-position bias table and its index become one constant (heads, N, N).

    Before::                                         After::

        attention_biases (8, 49) --Gather--+             attention_bias (8, 49, 49) const --+
        attention_bias_idxs (49, 49) ------+-> bias                                         +-> bias
        q @ k^T * scale + bias                           q @ k^T * scale + bias

    The parameter is removed, so no stale copy can outlive it; the exported graph has no Gather. Any module
    with the same protocol (``attention_biases`` gathered by ``bias()``, an ``attention_bias`` buffer still
    None) is folded: EfficientFormerV2's attentions, (8, 49, 49), and its downsample attention, whose 7x7
    queries over 14x14 keys give (8, 49, 196).
    """

    name = "constant-attention-bias"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        folded = 0
        for module in model.modules():
            if _gathers_bias(module):
                constant = module.bias().detach().clone()
                del module.attention_biases
                module.attention_bias = constant
                folded += 1
        return PassResult(changed=folded > 0, rewrites=folded)
