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

    A model that declares ``averaged_heads`` (EfficientFormerV2) has its two heads merged the same way::

        x -> BN -> mean -+-> head ------+              x -> BN -> mean -> head'
                         +-> head_dist -> Add -> Div(2)

    (its BatchNorm is folded into the head by the fold-head-batchnorm pass).
    """

    name = "merge-heads"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        names = _averaged_heads(model)
        if names is None or getattr(model, names[1]) is None:
            return PassResult(changed=False)
        head, head_dist = getattr(model, names[0]), getattr(model, names[1])
        weight = (head.weight.double() + head_dist.weight.double()) / 2
        bias = (head.bias.double() + head_dist.bias.double()) / 2
        norm = getattr(model, "norm", None)
        # V1's LayerNorm affine; V2's final BatchNorm is the fold-head-batchnorm pass's
        if isinstance(model, EfficientFormer) and isinstance(norm, nn.LayerNorm) and norm.elementwise_affine:
            bias = weight @ norm.bias.double() + bias
            weight = weight * norm.weight.double().view(1, -1)
            model.norm = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        merged = nn.Linear(weight.shape[1], weight.shape[0]).to(head.weight.dtype)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        setattr(model, names[0], merged)
        setattr(model, names[1], None)
        return PassResult(changed=True, rewrites=1)


def _averaged_heads(model: nn.Module) -> tuple[str, str] | None:
    """The (head, distillation head) attribute names whose eval outputs the model averages, if any."""
    if isinstance(model, EfficientFormer):
        return ("head", "head_dist")
    return getattr(model, "averaged_heads", None)
