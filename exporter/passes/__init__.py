"""Fold-stage passes: deploy-time rewrites of the PyTorch model, each proven by parity after it runs.

The pass classes (and torch) load on first use: recipes and command-line flags are checked against
``PASS_NAMES`` alone, so a bad flag is refused at once, before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# In the order the recipes run them. token-rows-mb3d (ONNX, TensorRT) and channels-first-mb3d (Core ML) are
# alternative MB3D layouts; erf-gelu is for ONNX below opset 20. talking-head-bias, fold-query-pool,
# values-first-attention and fold-head-batchnorm are EfficientFormerV2's; the others serve both families
# (V2's modules declare what they need). include-pad-pooling is Core AI's form of V1's token mixer.
_CLASSES = {  # pass name -> (module, class)
    "fuse-conv-bn": ("fuse_conv_bn", "FuseConvBatchNorm"),
    "fold-layer-scale": ("fold_layer_scale", "FoldLayerScale"),
    "blend-pool-mixer": ("blend_pool_mixer", "BlendPoolMixer"),
    "carry-mixer-scale": ("carry_mixer_scale", "CarryMixerScale"),
    "constant-attention-bias": ("constant_attention_bias", "ConstantAttentionBias"),
    "fold-attention-scale": ("fold_attention_scale", "FoldAttentionScale"),
    "talking-head-bias": ("talking_head_bias", "TalkingHeadBias"),
    "fold-query-pool": ("fold_query_pool", "FoldQueryPool"),
    "values-first-attention": ("values_first_attention", "ValuesFirstAttention"),
    "merge-heads": ("merge_heads", "MergeHeads"),
    "fold-head-batchnorm": ("fold_head_batchnorm", "FoldHeadBatchNorm"),
    "token-rows-mb3d": ("token_rows_mb3d", "TokenRowsMB3D"),
    "erf-gelu": ("erf_gelu", "ErfGeluForm"),
    "channels-first-mb3d": ("channels_first_mb3d", "ChannelsFirstMB3D"),
    "channel-block-attention": ("channel_block_attention", "ChannelBlockAttention"),
    "include-pad-pooling": ("include_pad_pooling", "IncludePadPooling"),
}
PASS_NAMES: tuple[str, ...] = tuple(_CLASSES)
_MODULE_OF = {cls: module for module, cls in _CLASSES.values()} | {"ModelPass": "base", "PassResult": "base"}

if TYPE_CHECKING:
    from efexport.exporter.passes.base import ModelPass, PassResult
    from efexport.exporter.passes.blend_pool_mixer import BlendPoolMixer
    from efexport.exporter.passes.carry_mixer_scale import CarryMixerScale
    from efexport.exporter.passes.channel_block_attention import ChannelBlockAttention
    from efexport.exporter.passes.channels_first_mb3d import ChannelsFirstMB3D
    from efexport.exporter.passes.constant_attention_bias import ConstantAttentionBias
    from efexport.exporter.passes.erf_gelu import ErfGeluForm
    from efexport.exporter.passes.fold_attention_scale import FoldAttentionScale
    from efexport.exporter.passes.fold_head_batchnorm import FoldHeadBatchNorm
    from efexport.exporter.passes.fold_layer_scale import FoldLayerScale
    from efexport.exporter.passes.fold_query_pool import FoldQueryPool
    from efexport.exporter.passes.fuse_conv_bn import FuseConvBatchNorm
    from efexport.exporter.passes.include_pad_pooling import IncludePadPooling
    from efexport.exporter.passes.merge_heads import MergeHeads
    from efexport.exporter.passes.talking_head_bias import TalkingHeadBias
    from efexport.exporter.passes.token_rows_mb3d import TokenRowsMB3D
    from efexport.exporter.passes.values_first_attention import ValuesFirstAttention

    ALL_PASSES: dict[str, type[ModelPass]]


def _all_passes() -> dict[str, Any]:
    passes = {name: getattr(importlib.import_module(f"{__name__}.{module}"), cls)
              for name, (module, cls) in _CLASSES.items()}
    misnamed = [name for name, cls in passes.items() if cls.name != name]
    if misnamed:
        raise RuntimeError(f"pass registry out of date: {misnamed} do not match their classes' names")
    return passes


def __getattr__(name: str) -> Any:
    if name == "ALL_PASSES":
        value = _all_passes()
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["ALL_PASSES", "PASS_NAMES", "BlendPoolMixer", "CarryMixerScale", "ChannelBlockAttention",
           "ChannelsFirstMB3D", "ConstantAttentionBias", "ErfGeluForm", "FoldAttentionScale", "FoldHeadBatchNorm",
           "FoldLayerScale", "FoldQueryPool", "FuseConvBatchNorm", "IncludePadPooling", "MergeHeads", "ModelPass",
           "PassResult", "TalkingHeadBias", "TokenRowsMB3D", "ValuesFirstAttention"]
