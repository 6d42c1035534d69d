"""Fold the BatchNorm before the token mean into the classification head(s)."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.passes.base import ModelPass, PassResult


def batchnorm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) in float64 with ``norm(x) = a * x + c`` per channel, from its eval statistics."""
    a = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return a, norm.bias.double() - norm.running_mean.double() * a


class FoldHeadBatchNorm(ModelPass):
    """``head(mean_hw(BN(x)))`` becomes ``head'(mean_hw(x))``: an eval BatchNorm is a per-channel affine
    ``a x + c``, and the spatial mean is linear, so ``mean(a x + c) = a mean(x) + c`` and the affine moves into
    every Linear that reads the mean: ``W' = W diag(a)``, ``b' = W c + b``.

    Before::                                         After::

        x -> BatchNorm -> ReduceMean -> Gemm(W, b)       x -> ReduceMean -> Gemm(W', b')

    A model declares it with ``norm_before_token_mean`` (the norm's attribute name) and ``averaged_heads``
    (the heads that read the mean; a head already merged away is None). The norm becomes ``nn.Identity``:
    one BatchNormalization node fewer. Computed in float64, then cast back.
    """

    name = "fold-head-batchnorm"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        norm_name = getattr(model, "norm_before_token_mean", None)
        norm = getattr(model, norm_name, None) if norm_name else None
        if not isinstance(norm, nn.BatchNorm2d) or norm.training:
            return PassResult(changed=False)
        a, c = batchnorm_affine(norm)
        for head in (getattr(model, name) for name in model.averaged_heads):
            if head is None:
                continue
            weight = head.weight.double()
            head.bias.copy_((weight @ c + head.bias.double()).to(head.bias.dtype))
            head.weight.copy_((weight * a.view(1, -1)).to(head.weight.dtype))
        setattr(model, norm_name, nn.Identity())
        return PassResult(changed=True, rewrites=1)
