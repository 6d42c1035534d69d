"""EfficientFormerV2 attention for Core ML: q, k and v as channel blocks of one tensor, so each attention has one
reshape in, one reshape out and no transpose."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer_v2 import Attention4D, Attention4DDownsample
from efexport.exporter.passes.base import ModelPass, PassResult


def conv_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) in float64 of a Conv2d, or of a ConvNorm's conv followed by its BatchNorm (or by the
    Identity fuse-conv-bn leaves), so this pass runs before or after that one."""
    conv, norm = (module, None) if isinstance(module, nn.Conv2d) else (module.conv, module.bn)
    weight = conv.weight.detach().double()
    bias = torch.zeros(weight.shape[0], dtype=torch.float64) if conv.bias is None else conv.bias.detach().double()
    if isinstance(norm, nn.BatchNorm2d):
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.detach().double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.detach().double()
        weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale + shift
    elif norm is not None and not isinstance(norm, nn.Identity):
        raise TypeError(f"channel-block-attention: cannot fold a {type(norm).__name__} into a convolution")
    return weight, bias


def new_conv(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype, stride: int = 1,
             groups: int = 1) -> nn.Conv2d:
    """A Conv2d holding ``weight`` and ``bias`` (cast to ``dtype``), padded to keep the grid at stride 1."""
    out_chs, in_per_group, kernel, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_chs, kernel, stride=stride, padding=kernel // 2, groups=groups)
    conv = conv.to(dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def blocked_value_order(heads: int, key_dim: int, val_dim: int) -> torch.Tensor:
    """Value channel ``head * val_dim + i`` (i = j * key_dim + c) moves to ``(j * heads + head) * key_dim + c``:
    v in blocks of ``key_dim`` channels, block ``j * heads + head`` being part j of that head's values. Entry p of
    the result is the original channel at new position p."""
    parts = val_dim // key_dim
    part, head, channel = torch.meshgrid(torch.arange(parts), torch.arange(heads), torch.arange(key_dim),
                                         indexing="ij")
    return (head * val_dim + part * key_dim + channel).flatten()


def repeat_heads(attn: torch.Tensor, parts: int) -> torch.Tensor:
    """(B, heads, Nq, Nk) -> (B, parts * heads, Nq, Nk), block ``j * heads + head`` = head's attention: one concat
    (``repeat`` would convert to Core ML's tile)."""
    return attn if parts == 1 else torch.cat([attn] * parts, dim=1)


class _ChannelBlocks(nn.Module):
    """What both attention kinds share once rewritten: value blocks, the scaled query, the projection."""

    def _init_blocks(self, attn: Attention4D | Attention4DDownsample) -> None:
        if attn.val_dim % attn.key_dim:
            raise ValueError(f"channel-block-attention needs val_dim a multiple of key_dim "
                             f"({attn.val_dim} vs {attn.key_dim})")
        self.heads, self.key_dim, self.parts = attn.num_heads, attn.key_dim, attn.val_dim // attn.key_dim
        self.hidden = attn.num_heads * attn.val_dim
        order, dtype = self.value_order(attn), self.dtype_of(attn)
        v_local_w, v_local_b = conv_affine(attn.v_local)
        self.v_local = new_conv(v_local_w[order], v_local_b[order], dtype, attn.v_local.conv.stride[0], self.hidden)
        proj_w, proj_b = conv_affine(attn.proj)
        self.proj = new_conv(proj_w[:, order], proj_b, dtype)
        self.act = attn.act
        self.register_buffer("attention_bias", attn.bias().detach().unsqueeze(0).clone())

    @staticmethod
    def value_order(attn: Attention4D | Attention4DDownsample) -> torch.Tensor:
        return blocked_value_order(attn.num_heads, attn.key_dim, attn.val_dim)

    @staticmethod
    def dtype_of(attn: nn.Module) -> torch.dtype:
        return next(attn.parameters()).dtype

    @staticmethod
    def scaled(attn: Attention4D | Attention4DDownsample, query: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The query conv with the logit scale in it (1 once fold-attention-scale has moved it there already)."""
        weight, bias = conv_affine(query)
        return weight * attn.scale, bias * attn.scale

    def values_out(self, v: torch.Tensor, attn: torch.Tensor, grid: int) -> torch.Tensor:
        """Blocks ``v`` (B, parts*heads, key_dim, Nk) times attention^T, back on the grid: (B, hidden, grid, grid)
        in the blocked channel order."""
        out = torch.matmul(v, repeat_heads(attn, self.parts).transpose(-1, -2))
        return out.reshape(-1, self.hidden, grid, grid)


class ChannelBlockAttention4D(_ChannelBlocks):
    """Attention4D with one conv for q, k, v: ``[v blocks | q | k]`` channels, one reshape into
    (B, (parts + 2) * heads, key_dim, N) and a split. v_local reads the value channels on the grid before the
    reshape; the output, reshaped back once, is in the same blocked channel order, which the projection's input
    columns follow."""

    def __init__(self, attn: Attention4D) -> None:
        super().__init__()
        self._init_blocks(attn)
        self.grid, self.num_tokens = attn.grid, attn.num_tokens
        self.stride_conv, self.upsample = attn.stride_conv, attn.upsample
        order = self.value_order(attn)
        q_w, q_b = self.scaled(attn, attn.q)
        k_w, k_b = conv_affine(attn.k)
        v_w, v_b = conv_affine(attn.v)
        self.qkv = new_conv(torch.cat([v_w[order], q_w, k_w]), torch.cat([v_b[order], q_b, k_b]),
                            self.dtype_of(attn))
        self.talking_head1, self.talking_head2 = attn.talking_head1, attn.talking_head2
        # the talking-head-bias pass may have carried the bias through talking_head1: then it is added after it
        self.bias_after_talking_head = bool(getattr(attn, "bias_after_talking_head", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        qkv = self.qkv(x)
        blocks = qkv.reshape(-1, (self.parts + 2) * self.heads, self.key_dim, self.num_tokens)
        v, q, k = blocks.split([self.parts * self.heads, self.heads, self.heads], dim=1)
        logits = torch.matmul(q.transpose(-1, -2), k)
        if self.bias_after_talking_head:
            logits = self.talking_head1(logits) + self.attention_bias
        else:
            logits = self.talking_head1(logits + self.attention_bias)
        attn = self.talking_head2(logits.softmax(dim=-1))
        out = self.values_out(v, attn, self.grid) + self.v_local(qkv[:, : self.hidden])
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(self.act(out))


def even_point_selection(grid: int, dtype: torch.dtype) -> torch.Tensor:
    """(grid**2, ceil(grid/2)**2) 0/1 matrix: column ``y * half + x`` picks token ``2y * grid + 2x`` (exact in FP16:
    one product by 1 and the rest by 0)."""
    half = (grid + 1) // 2
    rows = (2 * torch.arange(half).view(-1, 1) * grid + 2 * torch.arange(half).view(1, -1)).flatten()
    select = torch.zeros(grid * grid, half * half, dtype=dtype)
    select[rows, torch.arange(half * half)] = 1
    return select


class ChannelBlockAttentionDownsample(_ChannelBlocks):
    """Attention4DDownsample with its queries computed on the key grid and picked out after the one reshape.

    The query is ``proj(dw3x3_s2(x) + x[::2, ::2])`` (``proj(dw3x3_s2(x))`` after fold-query-pool). A padded
    stride-2 conv's output (y, x) is the stride-1 conv's output at (2y, 2x), and the 1x1 projection commutes with
    picking points, so the query at every key token, ``proj(dw3x3_s1(x) + x)``, holds the real queries at the even
    points. Being on the key grid it joins ``[v blocks | k]`` in one concat and one reshape; a constant 0/1 matmul
    then picks the even points.
    """

    def __init__(self, attn: Attention4DDownsample) -> None:
        super().__init__()
        self._init_blocks(attn)
        self.grid, self.out_grid, self.num_tokens = attn.grid, attn.out_grid, attn.num_tokens
        order, dtype = self.value_order(attn), self.dtype_of(attn)
        local, pool = attn.q.local, attn.q.pool
        if (local.kernel_size, local.stride, local.padding) != ((3, 3), (2, 2), (1, 1)) or (
                pool is not None and (pool.kernel_size, pool.stride, pool.padding) != (1, 2, 0)):
            raise ValueError("channel-block-attention: the downsample's query is not dw3x3 s2 p1 + every 2nd point")
        # None once fold-query-pool has moved the pixel pick into local's centre tap
        self.add_input_to_query = pool is not None
        local_w, local_b = conv_affine(local)
        self.q_local = new_conv(local_w, local_b, dtype, groups=local.groups)
        q_w, q_b = self.scaled(attn, attn.q.proj)
        self.q_proj = new_conv(q_w, q_b, dtype)
        k_w, k_b = conv_affine(attn.k)
        v_w, v_b = conv_affine(attn.v)
        self.kv = new_conv(torch.cat([v_w[order], k_w]), torch.cat([v_b[order], k_b]), dtype)
        self.register_buffer("query_points", even_point_selection(attn.grid, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.kv(x)
        local = self.q_local(x)
        queries = self.q_proj(local + x if self.add_input_to_query else local)
        blocks = torch.cat([kv, queries], dim=1).reshape(-1, (self.parts + 2) * self.heads, self.key_dim,
                                                         self.num_tokens)
        v, k, q = blocks.split([self.parts * self.heads, self.heads, self.heads], dim=1)
        q = torch.matmul(q, self.query_points)
        attn = (torch.matmul(q.transpose(-1, -2), k) + self.attention_bias).softmax(dim=-1)
        out = self.values_out(v, attn, self.out_grid) + self.v_local(kv[:, : self.hidden])
        return self.proj(self.act(out))


class ChannelBlockAttention(ModelPass):
    """EfficientFormerV2's attentions become 4D matmuls over channel blocks: one reshape in, one out, no transpose.

    Before (Attention4D; the downsample alike, without talking heads)::

        x -> q conv -> reshape (B,h,kd,N) -> transpose -+
        x -> k conv -> reshape (B,h,kd,N) --------------+-> matmul -> *scale + bias -> th1 -> softmax -> th2 -+
        x -> v conv -+-> reshape (B,h,val,N) -> transpose -----------------------------------------> matmul <-+
                     +-> v_local                      matmul -> transpose -> reshape (B,hidden,H,W) -> + <-+

    After::

        x -> qkv conv [v blocks | q*scale | k] -+-> reshape (B,(r+2)h,kd,N) -> split -> v, q, k
                                                +-> [:, :hidden] -> v_local (columns reordered) ----------+
        q^T k (matmul flag) + bias -> th1 -> softmax -> th2 -> concat r times -> v @ a^T (matmul flag)    |
        -> reshape (B,hidden,H,W) -> + <------------------------------------------------------------------+
        -> upsample (stage 2) -> GELU -> proj (input columns reordered)

    with ``r = val / kd`` and value channel ``head*val + j*kd + c`` at ``(j*h + head)*kd + c``: block j*h + head of
    the reshape is part j of that head's values, multiplied by that head's attention (the concat's block j*h +
    head). The attention downsample's queries live on a half-size grid; they are computed on the key grid
    (``proj(dw3x3_s1(x) + x)``, equal to the real queries at the even points), concatenated with ``[v blocks | k]``
    before the one reshape, and picked by a constant 0/1 matmul. Converted for Core ML (s0 FP16): 5 transposes
    and 20 reshapes before, none and 10 after. BatchNorms, the scale and a gathered bias are folded in float64.
    """

    name = "channel-block-attention"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
                   if isinstance(child, (Attention4D, Attention4DDownsample))]
        for parent, name, child in targets:
            form = ChannelBlockAttention4D if isinstance(child, Attention4D) else ChannelBlockAttentionDownsample
            setattr(parent, name, form(child))
        return PassResult(changed=bool(targets), rewrites=len(targets))
