"""EfficientFormerV2 (s0, s1, s2, l), defined for export.

Numerically the same network as the upstream snap-research implementation (arXiv 2212.08059, ICCV 2023), with
module names following timm's V2 layout, which is this project's native state-dict layout (as for V1). Two
deliberate differences from upstream, both about the attention bias:

* The bias is gathered from ``attention_biases`` on every forward, never cached, so the model is right in any
  order of ``load_state_dict``, ``eval()``, ``to(dtype)`` and ``to(device)``. (Upstream caches it as a plain
  attribute at ``train(False)``, which goes stale when weights are loaded or the model is cast or moved after
  ``eval()``.) A fold pass may later replace it by a constant through the ``attention_bias`` buffer, as for V1.
* ``attention_bias_idxs`` is derived from the resolution and not stored in the state dict (timm does the same);
  checkpoint import checks that an upstream checkpoint's stored copy agrees with it.

Shape of the network for a 224x224 input (widths C0..C3)::

    stem: conv3x3 s2 + BN + GELU, conv3x3 s2 + BN + GELU            -> C0 x 56 x 56
    stage 0: FFN blocks                                              -> C0 x 56 x 56
    stage 1: conv3x3 s2 + BN, FFN blocks                             -> C1 x 28 x 28
    stage 2: conv3x3 s2 + BN, FFN blocks, then attention blocks whose
             attention runs at 7x7 (depthwise stride-2 conv in, bilinear x2 out)   -> C2 x 14 x 14
    stage 3: attention downsample (7x7 queries over 14x14 keys) + conv3x3 s2 + BN,
             FFN blocks, then attention blocks at 7x7                -> C3 x 7 x 7
    BatchNorm, mean over the grid, head and head_dist (eval: their mean)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


@dataclass(frozen=True)
class EfficientFormerV2Config:
    variant: str
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[tuple[int, ...], ...]  # FFN expansion ratio of every block, per stage
    num_attn: int  # attention blocks at the end of stage 2 and, as many, at the end of stage 3 (counting from 0)
    key_dim: int = 32  # per head, in the blocks' attention
    num_heads: int = 8
    attn_ratio: int = 4  # value dim = attn_ratio * key_dim per head
    downsample_key_dim: int = 16  # per head, in the attention downsample before the last stage
    resolution: int = 7  # the attention grid: 7x7 for a 224x224 input (stage 2 runs at 14x14, strided to 7x7)
    num_classes: int = 1000
    published_params_m: float = 0.0  # classification and distillation heads included
    published_gmacs: float = 0.0
    published_top1: float = 0.0  # ImageNet-1k top-1 %, paper / upstream README
    published_iphone12_ms: float = 0.0  # iPhone 12, Core ML, all compute units (paper / upstream README)

    def __post_init__(self) -> None:
        if tuple(len(r) for r in self.mlp_ratios) != self.depths:
            raise ValueError(f"{self.variant}: one expansion ratio per block is needed; depths are {self.depths}")
        if self.num_attn > min(self.depths[2:]):
            raise ValueError(f"{self.variant}: more attention blocks than blocks in stages 2 and 3")


CONFIGS: dict[str, EfficientFormerV2Config] = {
    "s0": EfficientFormerV2Config(
        "s0", (32, 48, 96, 176), (2, 2, 6, 4),
        ((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4)), num_attn=2,
        published_params_m=3.60, published_gmacs=0.40, published_top1=75.7, published_iphone12_ms=0.9),
    "s1": EfficientFormerV2Config(
        "s1", (32, 48, 120, 224), (3, 3, 9, 6),
        ((4, 4, 4), (4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)), num_attn=2,
        published_params_m=6.19, published_gmacs=0.65, published_top1=79.0, published_iphone12_ms=1.1),
    "s2": EfficientFormerV2Config(
        "s2", (32, 64, 144, 288), (4, 4, 12, 8),
        ((4, 4, 4, 4), (4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)), num_attn=4,
        published_params_m=12.71, published_gmacs=1.25, published_top1=81.6, published_iphone12_ms=1.6),
    "l": EfficientFormerV2Config(
        "l", (40, 80, 192, 384), (5, 5, 15, 10),
        ((4, 4, 4, 4, 4), (4, 4, 4, 4, 4), (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
         (4, 4, 4, 3, 3, 3, 3, 4, 4, 4)), num_attn=6,
        published_params_m=26.32, published_gmacs=2.56, published_top1=83.3, published_iphone12_ms=2.7),
}
VARIANTS = tuple(CONFIGS)


def grid_before_last_stage(image_size: int) -> int:
    """Side of the grid stage 2 (counting from 0) runs at: two stem convs and two downsamples, each 3x3 s2 p1."""
    side = image_size
    for _ in range(4):
        side = (side - 1) // 2 + 1
    return side


def relative_position_indices(key_grid: int, query_stride: int = 1) -> torch.Tensor:
    """(queries, keys) index into a per-head bias table of ``key_grid**2`` entries, one per offset (|dy|, |dx|).

    Keys lie on a ``key_grid`` x ``key_grid`` grid; queries on every ``query_stride``-th point of it (the attention
    downsample's 7x7 queries over 14x14 keys). The offset (dy, dx) has index ``dy * key_grid + dx``: the order in
    which upstream numbers offsets as first seen, since the first query, at (0, 0), meets every offset in row-major
    order before any other query does.
    """
    keys = torch.arange(key_grid)
    queries = torch.arange(0, key_grid, query_stride)
    dy = (queries.view(-1, 1, 1, 1) - keys.view(1, 1, -1, 1)).abs()
    dx = (queries.view(1, -1, 1, 1) - keys.view(1, 1, 1, -1)).abs()
    return (dy * key_grid + dx).reshape(len(queries) ** 2, key_grid**2)


class GeluSite(NamedTuple):
    """Where a GELU sits between linear layers, for the erf-gelu pass: ``owner.<act>`` is the GELU; scaling the
    output channels of ``before`` and the ``offsets`` (bias terms that must follow an input scale) scales the
    GELU's input; ``after`` are the layers that read its output (their input channels take the inverse)."""

    owner: nn.Module
    act: str
    before: tuple[nn.Module, ...]
    offsets: tuple[torch.Tensor, ...]
    after: tuple[nn.Module, ...]


class ConvNorm(nn.Module):
    """Conv2d then BatchNorm2d (``.conv``, ``.bn``), padding ``kernel_size // 2``."""

    conv_bn_pairs = (("conv", "bn"),)  # what the fuse-conv-bn pass may fold

    def output_layer(self) -> nn.Module:
        """The last layer with per-output-channel weights: the BatchNorm, or the conv once they are fused."""
        return self.bn if isinstance(self.bn, nn.BatchNorm2d) else self.conv

    def offsets(self) -> tuple[torch.Tensor, ...]:
        """The tensors that, scaled by c together with the input, scale the output by c (the bias terms)."""
        found = [self.conv.bias] if self.conv.bias is not None else []
        if isinstance(self.bn, nn.BatchNorm2d):
            found += [self.bn.running_mean, self.bn.bias]
        return tuple(found)

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvNormAct(ConvNorm):
    """Conv2d, BatchNorm2d, then GELU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, groups)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Stem(nn.Module):
    """Two 3x3 stride-2 convs, each with BatchNorm and GELU: 3 -> C/2 -> C channels at a quarter of the input."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs // 2, 3, stride=2)
        self.conv2 = ConvNormAct(out_chs // 2, out_chs, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))

    def gelu_sites(self) -> tuple[GeluSite, ...]:
        # conv2's GELU feeds the residual stream, not one linear layer: not a site
        return (GeluSite(self.conv1, "act", (self.conv1.output_layer(),), (), (self.conv2.conv,)),)


class Mlp(nn.Module):
    """The FFN: 1x1 conv + BN + GELU, depthwise 3x3 + BN + GELU, 1x1 conv + BN (timm: ConvMlpWithNorm)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ConvNormAct(dim, hidden, 1)
        self.mid = ConvNormAct(hidden, hidden, 3, groups=hidden)
        self.fc2 = ConvNorm(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.mid(self.fc1(x)))

    def output_layer(self) -> nn.Module:
        return self.fc2.output_layer()

    def gelu_sites(self) -> tuple[GeluSite, ...]:
        return (GeluSite(self.fc1, "act", (self.fc1.output_layer(),), (), (self.mid.conv,)),
                GeluSite(self.mid, "act", (self.mid.output_layer(),), (), (self.fc2.conv,)))


class LayerScale(nn.Module):
    """Per-channel scale of a (B, C, H, W) tensor; ``gamma`` is (C,) as in timm (upstream stores (C, 1, 1))."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(-1, 1, 1)


class _BiasedAttention(nn.Module):
    """What both attention kinds share: a relative-position bias gathered on every forward."""

    attention_bias: torch.Tensor | None
    attention_bias_idxs: torch.Tensor

    def _init_bias(self, num_heads: int, key_grid: int, query_stride: int) -> None:
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, key_grid**2))
        # Derived, not stored: a checkpoint's copy is only checked against it on import.
        self.register_buffer("attention_bias_idxs", relative_position_indices(key_grid, query_stride),
                             persistent=False)
        # Set by a fold pass that turns the gathered bias into a constant; None: gather on every forward.
        self.register_buffer("attention_bias", None)
        # Set by the values-first-attention pass: one transpose of the weights instead of two of the values.
        self.values_first = False

    def bias(self) -> torch.Tensor:
        """(heads, queries, keys) bias, gathered now from the current parameter (never a stale copy)."""
        if self.attention_bias is not None:
            return self.attention_bias
        return self.attention_biases[:, self.attention_bias_idxs]

    def query_output_layer(self) -> nn.Module:
        """The layer whose output channels are exactly the queries (for the fold-attention-scale pass)."""
        raise NotImplementedError

    def _attend(self, attn: torch.Tensor, v_grid: torch.Tensor, side: int) -> torch.Tensor:
        """``attn @ v`` for (B, heads, queries, keys) weights and (B, heads * val_dim, H, W) values, as a
        (B, heads * val_dim, side, side) grid."""
        v = v_grid.reshape(-1, self.num_heads, self.val_dim, self.num_tokens)
        if self.values_first:  # set by the values-first-attention pass: (v @ attn^T) is already channels-first
            out = v @ attn.transpose(2, 3)
        else:
            out = (attn @ v.transpose(2, 3)).transpose(2, 3)
        return out.reshape(-1, self.num_heads * self.val_dim, side, side)


class Attention4D(_BiasedAttention):
    """Multi-head attention on a (B, C, H, W) grid with talking heads and a local value path.

    q, k, v are 1x1 conv + BN; the channels of each are grouped by head (channel ``head * per_head + i``).
    Logits ``q @ k * scale + bias`` are mixed across heads by a 1x1 conv (talking_head1) before the softmax and
    again after it (talking_head2). A depthwise 3x3 conv + BN of v (v_local) is added to the attention output,
    then GELU and a 1x1 conv + BN project back to ``dim``. With ``stride`` (stage 2), a depthwise stride-2
    conv + BN first reduces the grid, and the output is upsampled bilinearly by ``stride`` before the projection.
    """

    def __init__(self, dim: int, key_dim: int = 32, num_heads: int = 8, attn_ratio: int = 4, resolution: int = 7,
                 stride: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        if stride is not None:
            self.grid = math.ceil(resolution / stride)
            self.stride_conv: nn.Module | None = ConvNorm(dim, dim, 3, stride=stride, groups=dim)
            self.upsample: nn.Module | None = nn.Upsample(scale_factor=stride, mode="bilinear", align_corners=False)
        else:
            self.grid = resolution
            self.stride_conv = None
            self.upsample = None
        self.num_tokens = self.grid**2
        hidden = num_heads * self.val_dim
        self.q = ConvNorm(dim, num_heads * key_dim)
        self.k = ConvNorm(dim, num_heads * key_dim)
        self.v = ConvNorm(dim, hidden)
        self.v_local = ConvNorm(hidden, hidden, 3, groups=hidden)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = nn.GELU()
        self.proj = ConvNorm(hidden, dim)
        self._init_bias(num_heads, self.grid, 1)
        # Set by the talking-head-bias pass, which makes the bias talking_head1(bias): added after that conv.
        self.bias_after_talking_head = False

    def query_output_layer(self) -> nn.Module:
        return self.q.output_layer()

    def gelu_sites(self) -> tuple[GeluSite, ...]:
        # v feeds both the attention and v_local, whose sum (upsampled: linear) the GELU reads
        return (GeluSite(self, "act", (self.v.output_layer(),), self.v_local.offsets(), (self.proj.conv,)),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        if x.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"attention expects a {self.grid}x{self.grid} grid, got {tuple(x.shape[-2:])}")
        # -1 for the batch: constant reshape targets, so a dynamic-batch export needs no Shape/Gather ops
        q = self.q(x).reshape(-1, self.num_heads, self.key_dim, self.num_tokens).transpose(2, 3)
        k = self.k(x).reshape(-1, self.num_heads, self.key_dim, self.num_tokens)
        v_grid = self.v(x)
        v_local = self.v_local(v_grid)
        logits = q @ k
        if self.scale != 1.0:  # 1.0 once a fold pass has moved the scale into the query weights
            logits = logits * self.scale
        if self.bias_after_talking_head:
            attn = (self.talking_head1(logits) + self.bias()).softmax(dim=-1)
        else:
            attn = self.talking_head1(logits + self.bias()).softmax(dim=-1)
        attn = self.talking_head2(attn)
        out = self._attend(attn, v_grid, self.grid)
        out = out + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(self.act(out))


class LocalGlobalQuery(nn.Module):
    """Queries at half resolution: a depthwise 3x3 stride-2 conv plus every second pixel, then 1x1 conv + BN."""

    # The fold-query-pool pass may move the pixel pick into local's centre tap (local's output (i, j) is centred
    # on input (2i, 2j), the pixel the pool picks) and set pool to None.
    pool_into_local = ("pool", "local")

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.pool: nn.Module | None = nn.AvgPool2d(1, stride=2)  # a 1x1 window: picks pixels (0, 0), (0, 2), ...
        self.local = nn.Conv2d(in_dim, in_dim, 3, stride=2, padding=1, groups=in_dim)
        self.proj = ConvNorm(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local(x)
        return self.proj(local if self.pool is None else local + self.pool(x))


class Attention4DDownsample(_BiasedAttention):
    """Attention from a grid to one of half the side: queries from ``LocalGlobalQuery`` (7x7) attend over keys
    and values at the input grid (14x14); a depthwise stride-2 conv + BN of v is added; GELU, 1x1 conv + BN to
    ``out_dim``. No talking heads."""

    def __init__(self, dim: int, out_dim: int, key_dim: int = 16, num_heads: int = 8, attn_ratio: int = 4,
                 resolution: int = 14) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        self.grid = resolution
        self.out_grid = math.ceil(resolution / 2)
        self.num_tokens = resolution**2
        self.num_queries = self.out_grid**2
        hidden = num_heads * self.val_dim
        self.q = LocalGlobalQuery(dim, num_heads * key_dim)
        self.k = ConvNorm(dim, num_heads * key_dim)
        self.v = ConvNorm(dim, hidden)
        self.v_local = ConvNorm(hidden, hidden, 3, stride=2, groups=hidden)
        self.act = nn.GELU()
        self.proj = ConvNorm(hidden, out_dim)
        self._init_bias(num_heads, resolution, 2)

    def query_output_layer(self) -> nn.Module:
        return self.q.proj.output_layer()

    def gelu_sites(self) -> tuple[GeluSite, ...]:
        return (GeluSite(self, "act", (self.v.output_layer(),), self.v_local.offsets(), (self.proj.conv,)),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"attention downsample expects a {self.grid}x{self.grid} grid, got {tuple(x.shape[-2:])}")
        q = self.q(x).reshape(-1, self.num_heads, self.key_dim, self.num_queries).transpose(2, 3)
        k = self.k(x).reshape(-1, self.num_heads, self.key_dim, self.num_tokens)
        v_grid = self.v(x)
        v_local = self.v_local(v_grid)
        logits = q @ k
        if self.scale != 1.0:
            logits = logits * self.scale
        attn = (logits + self.bias()).softmax(dim=-1)
        out = self._attend(attn, v_grid, self.out_grid)
        return self.proj(self.act(out + v_local))


class Downsample(nn.Module):
    """Between stages: 3x3 stride-2 conv + BN, plus (before the last stage) an attention downsample."""

    def __init__(self, in_chs: int, out_chs: int, attn: Attention4DDownsample | None = None) -> None:
        super().__init__()
        self.conv = ConvNorm(in_chs, out_chs, 3, stride=2)
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.attn is not None:
            return self.attn(x) + out
        return out


class Block(nn.Module):
    """``x + ls1 * Attention4D(x)`` (attention blocks only), then ``x + ls2 * Mlp(x)``, all on (B, C, H, W)."""

    def __init__(self, dim: int, mlp_ratio: int, attn: Attention4D | None = None) -> None:
        super().__init__()
        self.token_mixer = attn
        self.ls1 = LayerScale(dim) if attn is not None else None
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None and self.ls1 is not None:
            x = x + self.ls1(self.token_mixer(x))
        return x + self.ls2(self.mlp(x))

    def layer_scale_sites(self) -> tuple[tuple[str, nn.Module], ...]:
        """(layer scale attribute, the layer whose output channels it scales), for the fold-layer-scale pass."""
        sites = [("ls2", self.mlp.output_layer())]
        if self.token_mixer is not None:
            sites.insert(0, ("ls1", self.token_mixer.proj.output_layer()))
        return tuple(sites)


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[Block]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2. Eval output: the mean of the classification and distillation heads; train: both."""

    # What the head passes read: eval averages ``head`` and ``head_dist`` (merge-heads), both applied to the
    # token mean of ``norm``'s output, a BatchNorm whose affine the fold-head-batchnorm pass moves into them.
    averaged_heads = ("head", "head_dist")
    norm_before_token_mean = "norm"

    def __init__(self, cfg: EfficientFormerV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths, res = cfg.widths, cfg.resolution
        self.stem = Stem(3, widths[0])
        stages = []
        for i, (dim, depth, ratios) in enumerate(zip(widths, cfg.depths, cfg.mlp_ratios, strict=True)):
            downsample: nn.Module
            if i == 0:
                downsample = nn.Identity()
            elif i == 3:  # the attention downsample: 14x14 (2 * res) keys, res x res queries
                attn = Attention4DDownsample(widths[2], dim, cfg.downsample_key_dim, cfg.num_heads, cfg.attn_ratio,
                                             resolution=2 * res)
                downsample = Downsample(widths[2], dim, attn)
            else:
                downsample = Downsample(widths[i - 1], dim)
            blocks = []
            for j, ratio in enumerate(ratios):
                attn_block = None
                if i >= 2 and j >= depth - cfg.num_attn:
                    # stage 2 runs at 2 * res: its attention strides down to res and upsamples back
                    attn_block = Attention4D(dim, cfg.key_dim, cfg.num_heads, cfg.attn_ratio,
                                             resolution=2 * res if i == 2 else res, stride=2 if i == 2 else None)
                blocks.append(Block(dim, ratio, attn_block))
            stages.append(Stage(downsample, blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], cfg.num_classes)
        self.head_dist: nn.Linear | None = nn.Linear(widths[-1], cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C3, 7, 7), after the final BatchNorm."""
        want = 2 * self.cfg.resolution
        if x.shape[-2] != x.shape[-1] or grid_before_last_stage(x.shape[-1]) != want:
            raise ValueError(
                f"EfficientFormerV2 needs a square input whose stage-3 grid is {want}x{want} and last stage "
                f"{self.cfg.resolution}x{self.cfg.resolution} (224x224); got {tuple(x.shape[-2:])}"
            )
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.mean(dim=(2, 3))
        if self.head_dist is None:  # merged into head by a fold pass: already the eval-mode average
            return self.head(x)
        logits, logits_dist = self.head(x), self.head_dist(x)
        if self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def build_model(variant: str) -> EfficientFormerV2:
    """A freshly initialised model (layer scales 1e-5: nearly the identity, see random_weights_v2)."""
    try:
        cfg = CONFIGS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientFormerV2 variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        ) from None
    return EfficientFormerV2(cfg)
