"""Multiply the values by the transposed attention weights, so the product needs no transpose back."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.passes.base import ModelPass, PassResult


class ValuesFirstAttention(ModelPass):
    """``(attn @ v^T)^T`` becomes ``v @ attn^T``: the same products, laid out channels-first directly.

    Before::                                                 After::

        v (B, h, d, N) -> Transpose -+                           v (B, h, d, N) -------------------+
        attn (B, h, M, N) ----------+-> MatMul -> Transpose       attn (B, h, M, N) -> Transpose --+-> MatMul
                                       (B, h, M, d)  (B, h, d, M)                                     (B, h, d, M)
        -> Reshape (B, h d, side, side)                          -> Reshape (B, h d, side, side)

    EfficientFormerV2's attentions read values from a (B, h d, H, W) conv output and write a grid of the same
    layout, so the query-major product needs the values transposed in and the result transposed out; the
    value-major product transposes only the attention weights (also the smaller tensor where d > N, e.g.
    8 x 49 x 49 against 8 x 128 x 49). One Transpose node fewer per attention. A module declares it with a
    ``values_first`` flag; the products are the same, only the summation order may round differently.
    """

    name = "values-first-attention"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        rewritten = 0
        for attn in model.modules():
            if getattr(attn, "values_first", True) is False:
                attn.values_first = True
                rewritten += 1
        return PassResult(changed=rewritten > 0, rewrites=rewritten)
