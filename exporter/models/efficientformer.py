"""EfficientFormer V1 (l1, l3, l7), defined for export.

Numerically the same network as the upstream snap-research implementation (arXiv 2206.01191), with
module names following timm's layout, which is this project's native state-dict layout. Two deliberate
differences from upstream:

* The attention bias is gathered from ``attention_biases`` on every forward, never cached, so the model
  is correct in any order of ``load_state_dict``, ``eval()``, ``to(dtype)`` and ``to(device)``. The fold
  stage turns it into a constant once, replacing the parameter (see ``exporter.passes``).
* ``attention_bias_idxs`` is derived from the resolution and not stored in the state dict; checkpoint
  import checks that a checkpoint's copy agrees with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from efexport.exporter.geometry import final_token_grid


@dataclass(frozen=True)
class EfficientFormerConfig:
    variant: str
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_mb3d: int  # MB3D (attention) blocks, all at the end of the last stage
    mlp_ratio: int = 4
    key_dim: int = 32
    num_heads: int = 8
    attn_ratio: int = 4
    resolution: int = 7  # token grid of the last stage: 7x7 for a 224x224 input
    num_classes: int = 1000
    published_params_m: float = 0.0
    published_gmacs: float = 0.0
    published_top1: float = 0.0  # ImageNet-1k top-1 %, 300 epochs (paper, Table 1)
    published_iphone12_ms: float = 0.0  # iPhone 12, Core ML, all compute units (paper, Table 1)


CONFIGS: dict[str, EfficientFormerConfig] = {
    "l1": EfficientFormerConfig("l1", (48, 96, 224, 448), (3, 2, 6, 4), 1,
                                published_params_m=12.29, published_gmacs=1.30,
                                published_top1=79.2, published_iphone12_ms=1.6),
    "l3": EfficientFormerConfig("l3", (64, 128, 320, 512), (4, 4, 12, 6), 4,
                                published_params_m=31.41, published_gmacs=3.93,
                                published_top1=82.4, published_iphone12_ms=3.0),
    "l7": EfficientFormerConfig("l7", (96, 192, 384, 768), (6, 6, 18, 8), 8,
                                published_params_m=82.23, published_gmacs=10.16,
                                published_top1=83.3, published_iphone12_ms=7.0),
}
VARIANTS = tuple(CONFIGS)


# Layouts of the MB3D tokens: the model's own, and the fold stage's per-platform forms
TOKENS_BNC = "B,N,C"
TOKEN_ROWS = "B*N,C"  # one row per token: Linear layers are plain 2-D matrix products (Gemm)
TOKENS_CHANNELS_FIRST = "B,C,1,N"  # 1x1 convolutions, as Apple's Neural Engine guidance prefers


class Stem(nn.Module):
    conv_bn_pairs = (("conv1", "norm1"), ("conv2", "norm2"))

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(out_chs // 2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(x)))


class Downsample(nn.Module):
    conv_bn_pairs = (("conv", "norm"),)

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Pooling(nn.Module):
    """MB4D token mixer: ``pool(x) - x`` (the block adds x back)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class ConvMlp(nn.Module):
    conv_bn_pairs = (("fc1", "norm1"), ("fc2", "norm2"))

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


class LinearMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale; channels are dim 1 of (B, C, H, W) or the last dim of (B, N, C)."""

    def __init__(self, dim: int, channels_first: bool, init_value: float = 1e-5) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma.view(-1, 1, 1) if self.channels_first else self.gamma
        return x * gamma


def attention_bias_indices(resolution: int) -> torch.Tensor:
    """(N, N) index of each token pair's offset (|dy|, |dx|), offsets numbered in first-seen order."""
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(idxs, dtype=torch.int64).view(len(points), len(points))


class Attention(nn.Module):
    """Multi-head self-attention over the 7x7 tokens with a learned relative-position bias.

    ``qkv`` is split per head: (B, N, heads, key + key + value) then [q | k | v] within each head.
    After the fold stage's bias pass, ``attention_biases`` is replaced by the constant ``attention_bias``.
    """

    attention_bias: torch.Tensor | None

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: int, resolution: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = key_dim * attn_ratio
        self.num_tokens = resolution * resolution
        self.scale = key_dim**-0.5
        self.qkv_per_head = 2 * key_dim + self.val_dim
        self.qkv = nn.Linear(dim, num_heads * self.qkv_per_head)
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        idxs = attention_bias_indices(resolution)
        num_offsets = resolution * resolution  # distinct (|dy|, |dx|) pairs
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)
        self.register_buffer("attention_bias", None)

    def bias(self) -> torch.Tensor:
        if self.attention_bias is not None:
            return self.attention_bias
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1]
        if tokens != self.num_tokens:
            raise ValueError(
                f"attention expects {self.num_tokens} tokens (a {int(self.num_tokens**0.5)}x"
                f"{int(self.num_tokens**0.5)} grid, i.e. a 224x224 input), got {tokens}"
            )
        # -1 for the batch: constant reshape targets, so a dynamic-batch export needs no Shape/Gather ops
        qkv = self.qkv(x).reshape(-1, self.num_tokens, self.num_heads, self.qkv_per_head).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        logits = q @ k.transpose(-2, -1)
        if self.scale != 1.0:  # 1.0 once the fold stage has moved the scale into the query weights
            logits = logits * self.scale
        attn = (logits + self.bias()).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, self.num_tokens, self.num_heads * self.val_dim)
        return self.proj(x)


class MetaBlock4d(nn.Module):
    """MB4D: ``x + ls1 * (pool(x) - x)`` then ``x + ls2 * ConvMlp(x)`` on (B, C, H, W)."""

    def __init__(self, dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.token_mixer: nn.Module = Pooling()
        self.ls1: nn.Module = LayerScale(dim, channels_first=True)
        self.mlp = ConvMlp(dim, dim * mlp_ratio)
        self.ls2: nn.Module = LayerScale(dim, channels_first=True)
        self.token_mixer_includes_residual = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer_includes_residual:  # set by the fold stage's pool-blend rewrite
            x = self.token_mixer(x)
        else:
            x = x + self.ls1(self.token_mixer(x))
        return x + self.ls2(self.mlp(x))


class Flat(nn.Module):
    """(B, C, H, W) -> (B, H*W, C), before the first MB3D. Occupies a slot in the block list."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class MetaBlock3d(nn.Module):
    """MB3D: ``x + ls1 * Attn(LN(x))`` then ``x + ls2 * LinearMlp(LN(x))`` on (B, N, C)."""

    def __init__(self, dim: int, cfg: EfficientFormerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, cfg.key_dim, cfg.num_heads, cfg.attn_ratio, cfg.resolution)
        self.ls1 = LayerScale(dim, channels_first=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LinearMlp(dim, dim * cfg.mlp_ratio)
        self.ls2 = LayerScale(dim, channels_first=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    def __init__(self, in_chs: int, dim: int, depth: int, num_mb3d: int, cfg: EfficientFormerConfig) -> None:
        super().__init__()
        self.downsample = Downsample(in_chs, dim) if in_chs != dim else nn.Identity()
        blocks: list[nn.Module] = [MetaBlock4d(dim, cfg.mlp_ratio) for _ in range(depth - num_mb3d)]
        if num_mb3d:
            blocks.append(Flat())
            blocks += [MetaBlock3d(dim, cfg) for _ in range(num_mb3d)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientFormer(nn.Module):
    """EfficientFormer V1. Eval output: the mean of the classification and distillation heads."""

    def __init__(self, cfg: EfficientFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(3, cfg.widths[0])
        in_chs = cfg.widths[0]
        stages = []
        for i, (dim, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            num_mb3d = cfg.num_mb3d if i == len(cfg.widths) - 1 else 0
            stages.append(Stage(in_chs, dim, depth, num_mb3d, cfg))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(cfg.widths[-1])
        self.head = nn.Linear(cfg.widths[-1], cfg.num_classes)
        self.head_dist: nn.Linear | None = nn.Linear(cfg.widths[-1], cfg.num_classes)
        self.token_layout = TOKENS_BNC  # how MB3D tokens are laid out; fold passes may change it

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        side = final_token_grid(x.shape[-1])
        if x.shape[-2] != x.shape[-1] or side != self.cfg.resolution:
            raise ValueError(
                f"EfficientFormer needs a square input whose last stage is a {self.cfg.resolution}x"
                f"{self.cfg.resolution} token grid (224x224); got {tuple(x.shape[-2:])}"
            )
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.token_layout == TOKENS_CHANNELS_FIRST:
            x = x.mean(dim=(2, 3))
        elif self.token_layout == TOKEN_ROWS:
            x = x.reshape(-1, self.cfg.resolution**2, x.shape[-1]).mean(dim=1)
        else:
            x = x.mean(dim=1)
        if self.head_dist is None:  # merged into head by the fold stage: already the eval-mode average
            return self.head(x)
        logits, logits_dist = self.head(x), self.head_dist(x)
        if self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def build_model(variant: str) -> EfficientFormer:
    """A freshly initialised model (layer scales 1e-5: nearly the identity, see random_weights)."""
    try:
        cfg = CONFIGS[variant]
    except KeyError:
        raise ValueError(f"unknown EfficientFormer variant {variant!r}; choose one of {', '.join(VARIANTS)}") from None
    return EfficientFormer(cfg)
