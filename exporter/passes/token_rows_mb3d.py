"""The token-rows MB3D form for ONNX and TensorRT: tokens as a (B*N, C) matrix, every Linear a plain Gemm."""

from __future__ import annotations

import torch
from torch import nn

from efexport.exporter.models.efficientformer import (
    TOKEN_ROWS,
    TOKENS_BNC,
    Attention,
    EfficientFormer,
    Flat,
    MetaBlock3d,
)
from efexport.exporter.passes.base import ModelPass, PassResult


class FlatTokenRows(nn.Module):
    """(B, C, H, W) -> (B*H*W, C): one transpose and one reshape, token order as ``Flat``'s."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(-1, self.channels)


class AttentionOnTokenRows(nn.Module):
    """``Attention`` taking and returning (B*N, C): the reshapes into heads and back are the only ones."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj
        self.num_heads, self.key_dim, self.val_dim = attn.num_heads, attn.key_dim, attn.val_dim
        self.num_tokens, self.qkv_per_head, self.scale = attn.num_tokens, attn.qkv_per_head, attn.scale
        self.register_buffer("attention_bias", attn.bias().detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).reshape(-1, self.num_tokens, self.num_heads, self.qkv_per_head).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        logits = q @ k.transpose(-2, -1)
        if self.scale != 1.0:  # the attention-scale pass may not have run
            logits = logits * self.scale
        attn = (logits + self.attention_bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, self.num_heads * self.val_dim))


class TokenRowsMB3D(ModelPass):
    """MB3D blocks run on a (B*N, C) matrix instead of (B, N, C).

    Before::                                           After::

        (B,C,H,W) -> Reshape -> Transpose -> (B,N,C)        (B,C,H,W) -> Transpose -> Reshape -> (B*N,C)
        LN -> Reshape -> Gemm -> Reshape -> (heads)         LN -> Gemm -> (heads)
        (heads) -> Reshape -> Gemm -> Reshape -> Add        (heads) -> Reshape -> Gemm -> Add
        LN -> Reshape -> Gemm -> GELU -> Gemm -> Reshape    LN -> Gemm -> GELU -> Gemm
        final LN -> ReduceMean(N) -> head                   final LN -> Reshape -> ReduceMean(N) -> head

    A Linear on 3-D tokens exports as MatMul + Add, which simplifiers turn into a Gemm between two
    Reshapes; on 2-D rows it is one Gemm with its bias. LayerNorm, GELU and the residual adds are
    per-row, so only attention needs the batch and head axes back. Four nodes fewer per MB3D block,
    one more at the head. For ONNX/TensorRT; Core ML uses the channels-first form instead.
    """

    name = "token-rows-mb3d"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        if not isinstance(model, EfficientFormer) or model.token_layout != TOKENS_BNC:
            return PassResult(changed=False)
        rewritten = 0
        for stage in model.stages:
            for index, block in enumerate(stage.blocks):
                if isinstance(block, Flat):
                    stage.blocks[index] = FlatTokenRows(model.cfg.widths[-1])
                elif isinstance(block, MetaBlock3d) and isinstance(block.token_mixer, Attention):
                    block.token_mixer = AttentionOnTokenRows(block.token_mixer)
                    rewritten += 1
        model.token_layout = TOKEN_ROWS
        return PassResult(changed=True, rewrites=rewritten)
