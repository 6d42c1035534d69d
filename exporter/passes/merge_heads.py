"""Merge the classification and distillation heads, and fold the final LayerNorm's affine into them."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import EfficientFormer
from efexport.exporter.passes.base import ModelPass, PassResult


class MergeHeads(ModelPass):
    """``(head(m) + head_dist(m)) / 2`` with ``m = mean_tokens(LN(x))`` becomes one Linear on the plain norm.

    Before::                                             After::

        x -> LN(gamma, beta) -> mean -+-> head ------+         x -> LN(no affine) -> mean -> head'
                                      +-> head_dist -> Add -> Div(2)

    Eval averages the heads, so ``W = (W1 + W2) / 2``, ``b = (b1 + b2) / 2``. The token mean is linear,
    so ``mean(gamma * n + beta) = gamma * mean(n) + beta`` and the affine moves into the Linear:
    ``W' = W diag(gamma)``, ``b' = W beta + b``. Computed in float64.
    """

    name = "merge-heads"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        if not isinstance(model, EfficientFormer) or model.head_dist is None:
            return PassResult(changed=False)
        weight = (model.head.weight.double() + model.head_dist.weight.double()) / 2
        bias = (model.head.bias.double() + model.head_dist.bias.double()) / 2
        norm = model.norm
        if norm.elementwise_affine:
            bias = weight @ norm.bias.double() + bias
            weight = weight * norm.weight.double().view(1, -1)
            model.norm = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        merged = nn.Linear(weight.shape[1], weight.shape[0]).to(model.head.weight.dtype)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        model.head, model.head_dist = merged, None
        return PassResult(changed=True, rewrites=1)
