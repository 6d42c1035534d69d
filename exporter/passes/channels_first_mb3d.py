"""The channels-first MB3D form for Core ML: tokens as (B, C, 1, N), 1x1 convolutions, no transposes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from efexport.exporter.models.efficientformer import (
    TOKENS_BNC,
    TOKENS_CHANNELS_FIRST,
    Attention,
    EfficientFormer,
    Flat,
    LayerScale,
    MetaBlock3d,
)
from efexport.exporter.passes.base import ModelPass, PassResult
from efexport.exporter.passes.fold_layer_scale import scale_output_channels


class FlatChannelsFirst(nn.Module):
    """(B, C, H, W) -> (B, C, 1, H*W): the one reshape of the channels-first form."""

    def __init__(self, channels: int, tokens: int) -> None:
        super().__init__()
        self.channels, self.tokens = channels, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.channels, 1, self.tokens)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B, C, 1, N) without affine, written so Core ML fuses it into one layer_norm op.
    (The affine of the LayerNorm it replaces is folded into the 1x1 convolution that follows.)"""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        variance = (centred * centred).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps)


def fold_norm_affine_into(norm: nn.LayerNorm, layer: nn.Conv2d | nn.Linear) -> None:
    """``W (gamma * n + beta) + b`` -> ``(W diag(gamma)) n + (W beta + b)``, in float64."""
    if not norm.elementwise_affine:
        return
    weight = layer.weight.double().reshape(layer.weight.shape[0], -1)
    gamma, beta = norm.weight.double(), norm.bias.double()
    bias = weight @ beta + layer.bias.double()
    layer.weight.copy_((weight * gamma.view(1, -1)).reshape(layer.weight.shape).to(layer.weight.dtype))
    layer.bias.copy_(bias.to(layer.bias.dtype))


def _conv1x1(linear: nn.Linear, rows: torch.Tensor | None = None) -> nn.Conv2d:
    weight = linear.weight.detach() if rows is None else linear.weight.detach()[rows]
    bias = linear.bias.detach() if rows is None else linear.bias.detach()[rows]
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1).to(weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(*weight.shape, 1, 1))
        conv.bias.copy_(bias)
    return conv


class AttentionChannelsFirst(nn.Module):
    """Attention on (B, C, 1, N) with no transpose: the logits are per-channel outer products of q and k
    (matmul with a transposed first operand) summed per head by a grouped 1x1 convolution of ones; each
    head's values are multiplied with the transposed attention (matmul's other transpose flag).

        x -> qkv conv -> split [q all heads | k all heads | v all heads]
        q^T k (B, heads*key, N, N) -> grouped ones-conv (B, heads, N, N) -> + bias -> softmax
        split heads -> v_h @ attn_h^T (B, val, 1, N) -> concat -> proj conv
    """

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        heads, key, val, per_head = attn.num_heads, attn.key_dim, attn.val_dim, attn.qkv_per_head
        starts = torch.arange(heads).view(-1, 1) * per_head
        q_rows = (starts + torch.arange(key)).flatten()
        k_rows = (starts + key + torch.arange(key)).flatten()
        v_rows = (starts + 2 * key + torch.arange(val)).flatten()
        self.heads, self.key_dim, self.val_dim = heads, key, val
        self.qkv = _conv1x1(attn.qkv, torch.cat([q_rows, k_rows, v_rows]))
        if attn.scale != 1.0:  # the attention-scale pass may not have run
            with torch.no_grad():
                self.qkv.weight[: heads * key] *= attn.scale
                self.qkv.bias[: heads * key] *= attn.scale
        self.proj = _conv1x1(attn.proj)
        self.register_buffer("head_sum", torch.ones(heads, key, 1, 1, dtype=self.qkv.weight.dtype))
        self.register_buffer("attention_bias", attn.bias().detach().unsqueeze(0).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split([self.heads * self.key_dim, self.heads * self.key_dim,
                                     self.heads * self.val_dim], dim=1)
        outer = torch.matmul(q.transpose(-1, -2), k)
        attn = (F.conv2d(outer, self.head_sum, groups=self.heads) + self.attention_bias).softmax(dim=-1)
        heads = [torch.matmul(v_h, a_h.transpose(-1, -2))
                 for v_h, a_h in zip(v.split(self.val_dim, dim=1), attn.split(1, dim=1), strict=True)]
        return self.proj(torch.cat(heads, dim=1))


class MetaBlock3dChannelsFirst(nn.Module):
    """MB3D on (B, C, 1, N): ``x + proj(attn(LN(x)))`` then ``x + fc2(gelu(fc1(LN(x))))``, with the layer
    scales and the LayerNorm affines folded into the convolutions around them."""

    def __init__(self, block: MetaBlock3d) -> None:
        super().__init__()
        attn, fc1, fc2 = block.token_mixer, block.mlp.fc1, block.mlp.fc2
        self.norm1 = ChannelLayerNorm(block.norm1.eps)
        self.token_mixer = AttentionChannelsFirst(attn)
        self.norm2 = ChannelLayerNorm(block.norm2.eps)
        self.fc1, self.act, self.fc2 = _conv1x1(fc1), block.mlp.act, _conv1x1(fc2)  # act: GELU or its erf form
        with torch.no_grad():
            fold_norm_affine_into(block.norm1, self.token_mixer.qkv)
            fold_norm_affine_into(block.norm2, self.fc1)
            if isinstance(block.ls1, LayerScale):
                scale_output_channels(self.token_mixer.proj, block.ls1.gamma)
            if isinstance(block.ls2, LayerScale):
                scale_output_channels(self.fc2, block.ls2.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mixer(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ChannelsFirstMB3D(ModelPass):
    """MB3D blocks switch from (B, N, C) tokens with Linear layers to (B, C, 1, N) with 1x1 convolutions.

    Before::                                              After::

        (B,C,H,W) -> flatten+transpose -> (B,N,C)             (B,C,H,W) -> reshape -> (B,C,1,N)
        LN(C) -> Linear qkv -> reshape/permute -> split        LN(dim 1) -> conv qkv -> split
        q @ k^T -> softmax -> @ v -> transpose/reshape         q^T k -> ones-conv per head -> softmax -> v @ a^T
        -> Linear proj ... final LN -> mean(N) -> head        -> conv proj ... final LN(dim 1) -> mean(1, N) -> head

    Apple's Neural Engine guidance favours this layout; Core ML fuses the channel LayerNorm into one
    layer_norm and the transposes into matmul flags, so the converted program has no transpose and one
    reshape. For Core ML only: ONNX Runtime and TensorRT are better served by token rows (token-rows-mb3d).
    """

    name = "channels-first-mb3d"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        if not isinstance(model, EfficientFormer) or model.token_layout != TOKENS_BNC:
            return PassResult(changed=False)
        last = model.stages[-1]
        rewritten = 0
        for index, block in enumerate(last.blocks):
            if isinstance(block, Flat):
                last.blocks[index] = FlatChannelsFirst(model.cfg.widths[-1], model.cfg.resolution ** 2)
            elif isinstance(block, MetaBlock3d):
                last.blocks[index] = MetaBlock3dChannelsFirst(block)
                rewritten += 1
        fold_norm_affine_into(model.norm, model.head)
        if model.head_dist is not None:
            fold_norm_affine_into(model.norm, model.head_dist)
        model.norm = ChannelLayerNorm(model.norm.eps)
        model.token_layout = TOKENS_CHANNELS_FIRST
        return PassResult(changed=True, rewrites=rewritten)
