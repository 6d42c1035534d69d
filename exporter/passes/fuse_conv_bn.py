"""Fold each BatchNorm into the convolution that feeds it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from efexport.exporter.passes.base import ModelPass, PassResult


class FuseConvBatchNorm(ModelPass):
    """Conv2d -> BatchNorm2d (eval statistics) becomes one Conv2d.

    Before::                          After::

        x -> Conv(W, b) -> BN -> y        x -> Conv(W', b') -> y

    with ``W' = W * g / sqrt(var + eps)`` per output channel and
    ``b' = (b - mean) * g / sqrt(var + eps) + beta``. The BN is replaced by ``nn.Identity``.
    Pairs are the ones a module declares in ``conv_bn_pairs`` (stem, downsamples, MB4D MLPs), so
    nothing is fused on the guess that two modules are adjacent. Computed in float64, then cast back.
    """

    name = "fuse-conv-bn"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        fused = 0
        for module in model.modules():
            for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
                conv, bn = getattr(module, conv_name), getattr(module, bn_name)
                if not isinstance(bn, nn.BatchNorm2d):
                    continue  # already fused
                dtype = conv.weight.dtype
                merged = fuse_conv_bn_eval(conv.eval().double(), bn.eval().double()).to(dtype)
                setattr(module, conv_name, merged)
                setattr(module, bn_name, nn.Identity())
                fused += 1
        return PassResult(changed=fused > 0, rewrites=fused)
