"""Fold-stage passes: deploy-time rewrites of the PyTorch model, each proven by parity after it runs."""

from exporter.passes.base import ModelPass, PassResult
from exporter.passes.blend_pool_mixer import BlendPoolMixer
from exporter.passes.carry_mixer_scale import CarryMixerScale
from exporter.passes.channels_first_mb3d import ChannelsFirstMB3D
from exporter.passes.constant_attention_bias import ConstantAttentionBias
from exporter.passes.erf_gelu import ErfGeluForm
from exporter.passes.fold_attention_scale import FoldAttentionScale
from exporter.passes.fold_layer_scale import FoldLayerScale
from exporter.passes.fuse_conv_bn import FuseConvBatchNorm
from exporter.passes.merge_heads import MergeHeads
from exporter.passes.token_rows_mb3d import TokenRowsMB3D

# In the order the recipes run them. token-rows-mb3d (ONNX, TensorRT) and channels-first-mb3d (Core ML) are
# alternative MB3D layouts; erf-gelu is for ONNX below opset 20.
ALL_PASSES: dict[str, type[ModelPass]] = {
    p.name: p
    for p in (FuseConvBatchNorm, FoldLayerScale, BlendPoolMixer, CarryMixerScale, ConstantAttentionBias,
              FoldAttentionScale, MergeHeads, TokenRowsMB3D, ErfGeluForm, ChannelsFirstMB3D)
}

__all__ = ["ALL_PASSES", "BlendPoolMixer", "CarryMixerScale", "ChannelsFirstMB3D", "ConstantAttentionBias",
           "ErfGeluForm", "FoldAttentionScale", "FoldLayerScale", "FuseConvBatchNorm", "MergeHeads", "ModelPass",
           "PassResult", "TokenRowsMB3D"]
