"""Fold layer scales into the linear layer whose output they scale."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import LayerScale, MetaBlock3d, MetaBlock4d
from efexport.exporter.passes.base import ModelPass, PassResult


def scale_output_channels(layer: nn.Module, gamma: torch.Tensor) -> None:
    """Multiply a Conv2d/Linear/BatchNorm2d's output channel c by gamma[c], in float64 then back."""
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight.copy_((weight.double() * gamma.double().view(shape)).to(weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() * gamma.double()).to(layer.bias.dtype))


def _last_layer_of_conv_mlp(block: MetaBlock4d) -> nn.Module:
    # before Conv+BN fusion the MLP ends in norm2 (a BatchNorm, affine per channel); after it, in fc2
    return block.mlp.norm2 if isinstance(block.mlp.norm2, nn.BatchNorm2d) else block.mlp.fc2


class FoldLayerScale(ModelPass):
    """A layer scale right after a linear layer becomes part of that layer's weights.

    Before::                                  After::

        MB4D: x + ls2 * (... fc2 -> BN2)          x + (... fc2' -> BN2')       BN2' = ls2 * BN2 (or fc2' after fusion)
        MB3D: x + ls1 * proj(attn)                x + proj'(attn)              proj' rows scaled by ls1
              x + ls2 * fc2(gelu(...))            x + fc2'(gelu(...))          fc2' rows scaled by ls2

    EfficientFormerV2 blocks declare theirs (``layer_scale_sites()``: the scale's name and the layer whose
    output channels it scales, the FFN's last conv or BN and the attention's projection)::

        V2:   x + ls1 * proj(attn(x))                x + proj'(attn(x))
              x + ls2 * fc2(mid(fc1(x)))              x + fc2'(mid(fc1(x)))

    The LayerScale modules become ``nn.Identity``: one Mul fewer per scale. MB4D's ``ls1`` scales
    ``pool(x) - x``, which has no weights to take it; the blend-pool-mixer pass handles it.
    """

    name = "fold-layer-scale"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        folded = 0
        for block in model.modules():
            targets: list[tuple[str, nn.Module]] = []
            if isinstance(block, MetaBlock4d):
                targets = [("ls2", _last_layer_of_conv_mlp(block))]
            elif isinstance(block, MetaBlock3d):
                targets = [("ls1", block.token_mixer.proj), ("ls2", block.mlp.fc2)]
            elif hasattr(block, "layer_scale_sites"):
                targets = list(block.layer_scale_sites())
            for scale_name, layer in targets:
                scale = getattr(block, scale_name)
                if isinstance(scale, LayerScale) or isinstance(getattr(scale, "gamma", None), nn.Parameter):
                    scale_output_channels(layer, scale.gamma)
                    setattr(block, scale_name, nn.Identity())
                    folded += 1
        return PassResult(changed=folded > 0, rewrites=folded)
