"""Fold the attention's 1/sqrt(key_dim) into the query weights."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import Attention
from efexport.exporter.passes.base import ModelPass, PassResult
from efexport.exporter.passes.fold_layer_scale import scale_output_channels


class FoldAttentionScale(ModelPass):
    """``(q @ k^T) * scale`` becomes ``q' @ k^T`` with the query rows of ``qkv`` pre-scaled.

    Before::                                        After::

        x -> qkv -> split -> q --+                      x -> qkv' -> split -> q' --+
                          k --> MatMul -> Mul(scale)                         k --> MatMul
                                                                     q' = scale * q

    ``qkv`` is laid out per head as [q (key_dim) | k (key_dim) | v (val_dim)], so the query rows are
    the first ``key_dim`` of each head's block. One Mul fewer per attention block.

    An attention that declares ``query_output_layer()`` (EfficientFormerV2's, the downsample's included) has
    its queries as every output channel of that layer (q's conv, or its BatchNorm before fusion)::

        x -> q (conv + BN) -> q @ k -> Mul(scale) -> + bias        x -> q' -> q' @ k -> + bias
    """

    name = "fold-attention-scale"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        folded = 0
        for attn in model.modules():
            if isinstance(attn, Attention) and attn.scale != 1.0:
                _scale_qkv_query_rows(attn)
            elif hasattr(attn, "query_output_layer") and attn.scale != 1.0:
                layer = attn.query_output_layer()
                scale_output_channels(layer, torch.full((layer.weight.shape[0],), attn.scale, dtype=torch.float64))
            else:
                continue
            attn.scale = 1.0
            folded += 1
        return PassResult(changed=folded > 0, rewrites=folded)


def _scale_qkv_query_rows(attn: Attention) -> None:
    """V1's fused qkv: the first ``key_dim`` rows of each head's block are its queries."""
    rows = torch.arange(attn.num_heads).view(-1, 1) * attn.qkv_per_head + torch.arange(attn.key_dim)
    rows = rows.flatten()
    weight, bias = attn.qkv.weight, attn.qkv.bias
    weight[rows] = (weight[rows].double() * attn.scale).to(weight.dtype)
    bias[rows] = (bias[rows].double() * attn.scale).to(bias.dtype)
