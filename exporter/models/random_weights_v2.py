"""Random weights with the statistics of a trained EfficientFormerV2, for use without a checkpoint.

Default initialisation sets every layer scale to 1e-5, so each block is nearly the identity and a parity check
on such a model proves almost nothing. Here instead: layer scales O(1), BatchNorm affines away from (1, 0),
attention biases O(1), conv and linear weights at fan-in scale (talking heads included), BatchNorm running
statistics calibrated on one forward pass over picture-like inputs and then perturbed (as training leaves them:
close to, not equal to, the activations' real statistics), and heads that tell inputs apart.
"""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer_v2 import (
    Attention4D,
    Attention4DDownsample,
    EfficientFormerV2,
    LayerScale,
)
from efexport.exporter.models.random_weights import fan_in_normal
from efexport.exporter.synthetic import normalised_images


@torch.no_grad()
def randomize_realistically(model: EfficientFormerV2, seed: int) -> EfficientFormerV2:
    """Fill ``model`` in place from ``seed`` (deterministic: same seed, same weights) and return it in eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.uniform_(low, high, generator=gen)

    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            fan_in_normal(module.weight, gen, gain=2.0**0.5)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=gen)
        elif isinstance(module, nn.BatchNorm2d):
            uniform(module.weight, 0.6, 1.4)
            module.bias.normal_(0.0, 0.2, generator=gen)
        elif isinstance(module, LayerScale):
            uniform(module.gamma, 0.2, 1.0)
        elif isinstance(module, Attention4D | Attention4DDownsample):
            module.attention_biases.normal_(0.0, 1.0, generator=gen)
    # Half picture-like, half noise, as in the parity inputs: heads centred on noise alone would see pooled
    # features that barely differ between inputs and so amplify float rounding.
    images = torch.cat([normalised_images(gen, 4), torch.randn(4, 3, 224, 224, generator=gen)])
    _calibrate_batchnorm(model, images, gen)
    _center_classifier(model, images, gen)
    return model.eval()


def _calibrate_batchnorm(model: EfficientFormerV2, images: torch.Tensor, gen: torch.Generator) -> None:
    """Running statistics from one batch of image-like input, then perturbed so they are not exact."""
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.eval()  # the model stays in eval mode (one output, not the pair); only the BatchNorms learn
    for bn in batchnorms:
        bn.train()
    model(images)
    for bn in batchnorms:
        bn.momentum = 0.1
        bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4, generator=gen))
        bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1 * bn.running_var.sqrt())
        bn.num_batches_tracked.fill_(1000)
        bn.eval()


def _center_classifier(model: EfficientFormerV2, images: torch.Tensor, gen: torch.Generator) -> None:
    """Heads that tell inputs apart: random deep nets map all inputs to similar pooled features, so the heads see
    the features minus their mean over the calibration batch, scaled to logits of std ~2 there."""
    pooled = model.forward_features(images).mean(dim=(2, 3))
    centred = pooled - pooled.mean(dim=0)
    heads = [model.head] + ([model.head_dist] if model.head_dist is not None else [])
    for head in heads:
        fan_in_normal(head.weight, gen, gain=1.0)
        head.weight.mul_(2.0 / (centred @ head.weight.T).std())
        head.bias.copy_(-head.weight @ pooled.mean(dim=0))
        head.bias.add_(torch.randn(head.bias.shape, generator=gen) * 0.1)
