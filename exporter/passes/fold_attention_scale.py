"""Fold the attention's 1/sqrt(key_dim) into the query weights."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import Attention
from efexport.exporter.passes.base import ModelPass, PassResult


class FoldAttentionScale(ModelPass):
    """``(q @ k^T) * scale`` becomes ``q' @ k^T`` with the query rows of ``qkv`` pre-scaled.

    Before::                                        After::

        x -> qkv -> split -> q --+                      x -> qkv' -> split -> q' --+
                          k --> MatMul -> Mul(scale)                         k --> MatMul
                                                                     q' = scale * q

    ``qkv`` is laid out per head as [q (key_dim) | k (key_dim) | v (val_dim)], so the query rows are
    the first ``key_dim`` of each head's block. One Mul fewer per attention block.
    """

    name = "fold-attention-scale"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        folded = 0
        for attn in model.modules():
            if not isinstance(attn, Attention) or attn.scale == 1.0:
                continue
            rows = torch.arange(attn.num_heads).view(-1, 1) * attn.qkv_per_head + torch.arange(attn.key_dim)
            rows = rows.flatten()
            weight, bias = attn.qkv.weight, attn.qkv.bias
            weight[rows] = (weight[rows].double() * attn.scale).to(weight.dtype)
            bias[rows] = (bias[rows].double() * attn.scale).to(bias.dtype)
            attn.scale = 1.0
            folded += 1
        return PassResult(changed=folded > 0, rewrites=folded)
