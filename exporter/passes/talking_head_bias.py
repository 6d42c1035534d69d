"""Carry the constant attention bias through the pre-softmax talking head."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.passes.base import ModelPass, PassResult


class TalkingHeadBias(ModelPass):
    """``talking_head1(logits + B)`` becomes ``talking_head1'(logits) + B'``, with ``B' = talking_head1(B)``
    and ``talking_head1'`` the same 1x1 conv without its bias.

    Before::                                            After::

        q @ k -> Add(B) -> Conv1x1(W, b) -> Softmax         q @ k -> Conv1x1(W) -> Add(B') -> Softmax
                                                            B' = W B + b, a constant (heads, N, N)

    The talking head is a 1x1 conv across heads, linear at every (query, key) pair, so the constant moves
    through it exactly (computed in float64); the conv's own bias becomes part of the constant, so the conv
    needs none. The node count is unchanged; what changes is that the one constant added to the logits is
    added where the softmax reads them. Requires the constant bias (constant-attention-bias pass) and a module declaring
    ``bias_after_talking_head``; EfficientFormerV2's downsample attention has no talking head and is left.
    """

    name = "talking-head-bias"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        carried = 0
        for attn in model.modules():
            if getattr(attn, "bias_after_talking_head", True) or getattr(attn, "attention_bias", None) is None:
                continue
            head: nn.Conv2d = attn.talking_head1
            weight = head.weight.double().flatten(1)  # (heads out, heads in)
            carried_bias = torch.einsum("oh,hqk->oqk", weight, attn.attention_bias.double())
            if head.bias is not None:
                carried_bias += head.bias.double().view(-1, 1, 1)
                head.bias = None
            attn.attention_bias = carried_bias.to(attn.attention_bias.dtype)
            attn.bias_after_talking_head = True
            carried += 1
        return PassResult(changed=carried > 0, rewrites=carried)
