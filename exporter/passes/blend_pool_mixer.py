"""Rewrite the MB4D token mixer and its residual into a per-channel blend of x and pool(x)."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import LayerScale, MetaBlock4d, Pooling
from efexport.exporter.passes.base import ModelPass, PassResult


class PoolBlend(nn.Module):
    """``keep * x + mix * pool(x)``, per channel: the MB4D token mixer with its residual included.
    A factor of None is 1 and costs no multiplication (the carry-mixer-scale pass arranges that)."""

    keep: torch.Tensor | None
    mix: torch.Tensor | None

    def __init__(self, pool: nn.AvgPool2d, keep: torch.Tensor | None, mix: torch.Tensor | None) -> None:
        super().__init__()
        self.pool = pool
        self.register_buffer("keep", None if keep is None else keep.reshape(-1, 1, 1))
        self.register_buffer("mix", None if mix is None else mix.reshape(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = x if self.keep is None else x * self.keep
        pooled = self.pool(x) if self.mix is None else self.pool(x) * self.mix
        return kept + pooled


class BlendPoolMixer(ModelPass):
    """``x + ls1 * (pool(x) - x)`` becomes ``(1 - ls1) * x + ls1 * pool(x)``.

    Before::                                     After::

        x --+--> AvgPool --> Sub --> Mul(ls1) --> Add       x --+--> Mul(1 - ls1) -----------> Add
            +-------------------^                  ^            +--> AvgPool --> Mul(ls1) ----^
            +--------------------------------------+

    The same four nodes, but no Sub and no node that depends on two others before the residual: the
    two branches are independent per-channel scalings, which runtimes fuse into the pooling and the add.
    The block's ``ls1`` becomes ``nn.Identity`` and its residual add is part of the blend.
    """

    name = "blend-pool-mixer"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        rewritten = 0
        for block in model.modules():
            if isinstance(block, MetaBlock4d) and isinstance(block.token_mixer, Pooling) \
                    and isinstance(block.ls1, LayerScale):
                gamma = block.ls1.gamma.detach()
                block.token_mixer = PoolBlend(block.token_mixer.pool, 1.0 - gamma, gamma.clone())
                block.ls1 = nn.Identity()
                block.token_mixer_includes_residual = True
                rewritten += 1
        return PassResult(changed=rewritten > 0, rewrites=rewritten)
