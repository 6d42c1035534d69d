"""Move a strided pixel pick added to a depthwise strided conv into that conv's centre tap."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.passes.base import ModelPass, PassResult


def _pick_matches_centre(pool: nn.Module, conv: nn.Module) -> bool:
    """``pool`` picks input (s i, s j) for output (i, j), and ``conv`` is depthwise, stride s, an odd kernel
    padded by half, so its output (i, j) is centred on that same input pixel."""
    if not isinstance(pool, nn.AvgPool2d) or not isinstance(conv, nn.Conv2d):
        return False
    as_pair = nn.modules.utils._pair
    kernel = as_pair(conv.kernel_size)
    return (as_pair(pool.kernel_size) == (1, 1) and as_pair(pool.padding) == (0, 0)
            and as_pair(pool.stride) == as_pair(conv.stride)
            and conv.groups == conv.in_channels == conv.out_channels
            and all(k % 2 == 1 for k in kernel) and as_pair(conv.padding) == (kernel[0] // 2, kernel[1] // 2)
            and conv.dilation in (1, (1, 1)))


class FoldQueryPool(ModelPass):
    """``local(x) + pick(x)`` becomes ``local'(x)``, with 1 added to each channel's centre tap of ``local``.

    Before::                                           After::

        x -+-> DWConv3x3 s2 ------+-> Add -> proj          x -> DWConv3x3 s2 (centre + 1) -> proj
           +-> AveragePool 1x1 s2 +

    EfficientFormerV2's attention-downsample queries (``LocalGlobalQuery``) add every second pixel
    (a 1x1 average pool of stride 2) to a depthwise 3x3 stride-2 conv. The pick is the identity tap at the
    conv's centre, so it is exactly part of the conv: two nodes fewer (AveragePool, Add). A module declares
    the pair with ``pool_into_local = (pool attribute, conv attribute)``; the pool becomes None.
    """

    name = "fold-query-pool"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        folded = 0
        for module in model.modules():
            pool_name, conv_name = getattr(module, "pool_into_local", (None, None))
            if pool_name is None:
                continue
            pool, conv = getattr(module, pool_name), getattr(module, conv_name)
            if not _pick_matches_centre(pool, conv):
                continue
            kh, kw = conv.weight.shape[-2:]
            conv.weight[:, 0, kh // 2, kw // 2] += 1.0
            setattr(module, pool_name, None)
            folded += 1
        return PassResult(changed=folded > 0, rewrites=folded)
