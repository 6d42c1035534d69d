"""An independent re-statement of upstream snap-research EfficientFormerV2, for parity tests only.

Written from the published architecture (snap-research models/efficientformer_v2.py, the ICCV 2023 paper), in
upstream's structure and with upstream's state-dict keys (patch_embed.0/1/3/4, network.<i>.<j>, Sequential
indices .0/.1 for conv/BN and .1/.2 for the act-conv-BN projections, mlp.fc1/norm1/mid/mid_norm/fc2/norm2,
layer_scale_1/2 of shape (C, 1, 1), the attention downsample's attn.* plus conv/bn, dist_head, and the stored
attention_bias_idxs), computing things upstream's way: offsets numbered in first-seen order, the bias gathered
through ``attention_bias_idxs`` inside the forward (upstream caches it at eval(); this re-statement does not, so
it is a fixed point to compare against), per-head splits by flatten/reshape/permute, (C, 1, 1) layer scales
broadcast, the final BatchNorm pooled by flatten(2).mean(-1), and the two heads averaged in eval mode.
Our model (exporter.models.efficientformer_v2) must match it to float32 rounding once the keys are mapped.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

WIDTHS = {"s0": [32, 48, 96, 176], "s1": [32, 48, 120, 224], "s2": [32, 64, 144, 288], "l": [40, 80, 192, 384]}
DEPTHS = {"s0": [2, 2, 6, 4], "s1": [3, 3, 9, 6], "s2": [4, 4, 12, 8], "l": [5, 5, 15, 10]}
VIT_NUM = {"s0": 2, "s1": 2, "s2": 4, "l": 6}
E_RATIOS = {
    "s0": {0: [4, 4], 1: [4, 4], 2: [4, 3, 3, 3, 4, 4], 3: [4, 3, 3, 4]},
    "s1": {0: [4] * 3, 1: [4] * 3, 2: [4, 4, 3, 3, 3, 3, 4, 4, 4], 3: [4, 4, 3, 3, 4, 4]},
    "s2": {0: [4] * 4, 1: [4] * 4, 2: [4, 4] + [3] * 6 + [4] * 4, 3: [4, 4, 3, 3, 3, 3, 4, 4]},
    "l": {0: [4] * 5, 1: [4] * 5, 2: [4] * 4 + [3] * 7 + [4] * 4, 3: [4, 4, 4, 3, 3, 3, 3, 4, 4, 4]},
}


def conv_bn(in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=kernel // 2, groups=groups),
                         nn.BatchNorm2d(out_chs))


def first_seen_offsets(queries: list[tuple[int, int]], keys: list[tuple[int, int]], step: int
                       ) -> tuple[int, torch.Tensor]:
    """Upstream's table: each (|dy|, |dx|) offset numbered when first met, queries outer, keys inner."""
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in queries:
        for p2 in keys:
            off = (abs(p1[0] * step - p2[0]), abs(p1[1] * step - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return len(offsets), torch.LongTensor(idxs).view(len(queries), len(keys))


class Attention4D(nn.Module):
    def __init__(self, dim, key_dim=32, num_heads=8, attn_ratio=4, resolution=7, stride=None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        if stride is not None:
            self.resolution = math.ceil(resolution / stride)
            self.stride_conv = conv_bn(dim, dim, 3, stride=stride, groups=dim)
            self.upsample = nn.Upsample(scale_factor=stride, mode="bilinear")
        else:
            self.resolution = resolution
            self.stride_conv = None
            self.upsample = None
        self.N = self.resolution**2
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads
        self.q = conv_bn(dim, num_heads * key_dim)
        self.k = conv_bn(dim, num_heads * key_dim)
        self.v = conv_bn(dim, self.dh)
        self.v_local = conv_bn(self.dh, self.dh, 3, groups=self.dh)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, dim, 1), nn.BatchNorm2d(dim))
        points = list(itertools.product(range(self.resolution), range(self.resolution)))
        count, idxs = first_seen_offsets(points, points, 1)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, count))
        self.register_buffer("attention_bias_idxs", idxs)

    def forward(self, x):
        B = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        q = self.q(x).flatten(2).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        k = self.k(x).flatten(2).reshape(B, self.num_heads, -1, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head1(attn)
        attn = attn.softmax(dim=-1)
        attn = self.talking_head2(attn)
        x = attn @ v
        out = x.transpose(2, 3).reshape(B, self.dh, self.resolution, self.resolution) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(out)


def stem(in_chs, out_chs):
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1), nn.BatchNorm2d(out_chs // 2), nn.GELU(),
        nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1), nn.BatchNorm2d(out_chs), nn.GELU(),
    )


class LGQuery(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, stride=2, padding=1, groups=in_dim))
        self.proj = conv_bn(in_dim, out_dim)

    def forward(self, x):
        return self.proj(self.local(x) + self.pool(x))


class Attention4DDownsample(nn.Module):
    def __init__(self, dim, key_dim=16, num_heads=8, attn_ratio=4, resolution=14, out_dim=None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.resolution = resolution
        self.resolution2 = math.ceil(resolution / 2)
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads
        out_dim = out_dim or dim
        self.q = LGQuery(dim, num_heads * key_dim)
        self.N = resolution**2
        self.N2 = self.resolution2**2
        self.k = conv_bn(dim, num_heads * key_dim)
        self.v = conv_bn(dim, self.dh)
        self.v_local = conv_bn(self.dh, self.dh, 3, stride=2, groups=self.dh)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, out_dim, 1), nn.BatchNorm2d(out_dim))
        keys = list(itertools.product(range(resolution), range(resolution)))
        queries = list(itertools.product(range(self.resolution2), range(self.resolution2)))
        count, idxs = first_seen_offsets(queries, keys, math.ceil(resolution / self.resolution2))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, count))
        self.register_buffer("attention_bias_idxs", idxs)

    def forward(self, x):
        B = x.shape[0]
        q = self.q(x).flatten(2).reshape(B, self.num_heads, -1, self.N2).permute(0, 1, 3, 2)
        k = self.k(x).flatten(2).reshape(B, self.num_heads, -1, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(2, 3)
        out = x.reshape(B, self.dh, self.resolution2, self.resolution2) + v_local
        return self.proj(out)


class Embedding(nn.Module):
    """Plain (proj, norm) between early stages; with ``asub`` the attention downsample (attn + conv/bn)."""

    def __init__(self, in_chans, embed_dim, asub=False, resolution=None):
        super().__init__()
        self.asub = asub
        if asub:
            self.attn = Attention4DDownsample(in_chans, out_dim=embed_dim, resolution=resolution)
            self.conv = nn.Conv2d(in_chans, embed_dim, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(embed_dim)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, 3, stride=2, padding=1)
            self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x):
        if self.asub:
            return self.attn(x) + self.bn(self.conv(x))
        return self.norm(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1)
        self.mid = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features)
        self.mid_norm = nn.BatchNorm2d(hidden_features)
        self.norm1 = nn.BatchNorm2d(hidden_features)
        self.norm2 = nn.BatchNorm2d(in_features)

    def forward(self, x):
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


class AttnFFN(nn.Module):
    def __init__(self, dim, mlp_ratio, resolution, stride):
        super().__init__()
        self.token_mixer = Attention4D(dim, resolution=resolution, stride=stride)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(1e-5 * torch.ones(dim).unsqueeze(-1).unsqueeze(-1))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones(dim).unsqueeze(-1).unsqueeze(-1))

    def forward(self, x):
        x = x + self.layer_scale_1 * self.token_mixer(x)
        return x + self.layer_scale_2 * self.mlp(x)


class FFN(nn.Module):
    def __init__(self, dim, mlp_ratio):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones(dim).unsqueeze(-1).unsqueeze(-1))

    def forward(self, x):
        return x + self.layer_scale_2 * self.mlp(x)


def eformer_block(dim, index, layers, vit_num, resolution, e_ratios):
    blocks = []
    for block_idx in range(layers[index]):
        mlp_ratio = e_ratios[index][block_idx]
        if index >= 2 and block_idx > layers[index] - 1 - vit_num:
            blocks.append(AttnFFN(dim, mlp_ratio, resolution, stride=2 if index == 2 else None))
        else:
            blocks.append(FFN(dim, mlp_ratio))
    return nn.Sequential(*blocks)


class UpstreamEfficientFormerV2(nn.Module):
    def __init__(self, variant: str, image_size: int = 224):
        super().__init__()
        layers, dims = DEPTHS[variant], WIDTHS[variant]
        self.patch_embed = stem(3, dims[0])
        network = []
        for i in range(len(layers)):
            resolution = math.ceil(image_size / 2 ** (i + 2))
            network.append(eformer_block(dims[i], i, layers, VIT_NUM[variant], resolution, E_RATIOS[variant]))
            if i >= len(layers) - 1:
                break
            network.append(Embedding(dims[i], dims[i + 1], asub=i >= 2, resolution=resolution))
        self.network = nn.ModuleList(network)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], 1000)
        self.dist_head = nn.Linear(dims[-1], 1000)

    def forward(self, x):
        x = self.patch_embed(x)
        for block in self.network:
            x = block(x)
        x = self.norm(x)
        cls_out = self.head(x.flatten(2).mean(-1)), self.dist_head(x.flatten(2).mean(-1))
        if not self.training:
            cls_out = (cls_out[0] + cls_out[1]) / 2
        return cls_out
