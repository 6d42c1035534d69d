"""Fold-stage passes: deploy-time rewrites of the PyTorch model, each proven by parity after it runs."""

from exporter.passes.base import ModelPass, PassResult
from exporter.passes.constant_attention_bias import ConstantAttentionBias
from exporter.passes.fuse_conv_bn import FuseConvBatchNorm

ALL_PASSES: dict[str, type[ModelPass]] = {p.name: p for p in (FuseConvBatchNorm, ConstantAttentionBias)}

__all__ = ["ALL_PASSES", "ConstantAttentionBias", "FuseConvBatchNorm", "ModelPass", "PassResult"]
