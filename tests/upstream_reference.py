"""An independent re-statement of upstream snap-research EfficientFormer V1, for parity tests only.

Written from the published architecture (snap-research models/efficientformer.py, the paper), in upstream's
structure and with upstream's state-dict keys (patch_embed.*, network.*, layer_scale_*, dist_head), including
upstream's way of computing things: attention bias gathered through ``attention_bias_idxs`` inside the forward,
per-head qkv split after a permute, layer scales broadcast with unsqueeze, heads averaged at the end. Our model
(exporter.models.efficientformer) must match it to float32 rounding once the keys are mapped.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

WIDTHS = {"l1": [48, 96, 224, 448], "l3": [64, 128, 320, 512], "l7": [96, 192, 384, 768]}
DEPTHS = {"l1": [3, 2, 6, 4], "l3": [4, 4, 12, 6], "l7": [6, 6, 18, 8]}
VIT_NUM = {"l1": 1, "l3": 4, "l7": 8}


class Attention(nn.Module):
    def __init__(self, dim=384, key_dim=32, num_heads=8, attn_ratio=4, resolution=7):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.qkv = nn.Linear(dim, self.dh + self.nh_kd * 2)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                if off not in offsets:
                    offsets[off] = len(offsets)
                idxs.append(offsets[off])
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)))

    def forward(self, x):
        B, N, _C = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3).split(
            [self.key_dim, self.key_dim, self.d], dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.dh)
        return self.proj(x)


def stem(in_chs, out_chs):
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs // 2, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(out_chs // 2), nn.ReLU(),
        nn.Conv2d(out_chs // 2, out_chs, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(out_chs), nn.ReLU(),
    )


class Embedding(nn.Module):
    def __init__(self, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x):
        return self.norm(self.proj(x))


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class Pooling(nn.Module):
    def __init__(self, pool_size=3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class LinearMlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1)
        self.norm1 = nn.BatchNorm2d(hidden_features)
        self.norm2 = nn.BatchNorm2d(in_features)

    def forward(self, x):
        x = self.act(self.norm1(self.fc1(x)))
        return self.norm2(self.fc2(x))


class Meta3D(nn.Module):
    def __init__(self, dim, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LinearMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(1e-5 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(0).unsqueeze(0) * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2.unsqueeze(0).unsqueeze(0) * self.mlp(self.norm2(x))


class Meta4D(nn.Module):
    def __init__(self, dim, mlp_ratio=4.0):
        super().__init__()
        self.token_mixer = Pooling()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(1e-5 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(x)
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(x)


def meta_blocks(dim, index, layers, vit_num):
    blocks = []
    if index == 3 and vit_num == layers[index]:
        blocks.append(Flat())
    for block_idx in range(layers[index]):
        if index == 3 and layers[index] - block_idx <= vit_num:
            blocks.append(Meta3D(dim))
        else:
            blocks.append(Meta4D(dim))
            if index == 3 and layers[index] - block_idx - 1 == vit_num:
                blocks.append(Flat())
    return nn.Sequential(*blocks)


class UpstreamEfficientFormer(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        layers, dims, vit_num = DEPTHS[variant], WIDTHS[variant], VIT_NUM[variant]
        self.patch_embed = stem(3, dims[0])
        network = []
        for i in range(len(layers)):
            network.append(meta_blocks(dims[i], i, layers, vit_num))
            if i >= len(layers) - 1:
                break
            if dims[i] != dims[i + 1]:
                network.append(Embedding(dims[i], dims[i + 1]))
        self.network = nn.ModuleList(network)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], 1000)
        self.dist_head = nn.Linear(dims[-1], 1000)

    def forward(self, x):
        x = self.patch_embed(x)
        for block in self.network:
            x = block(x)
        x = self.norm(x)
        cls_out = self.head(x.mean(-2)), self.dist_head(x.mean(-2))
        if not self.training:
            cls_out = (cls_out[0] + cls_out[1]) / 2
        return cls_out
