"""EfficientFormerV2 checkpoint layouts: upstream (snap-research) and timm, mapped onto the native layout.

The native layout is timm's (``efficientformer_v2.py`` builds exactly timm's keys and shapes). Every key and
shape of both layouts is recorded in the test data (``tests/data/state-dicts/v2-*.json``).

Upstream differs from the native layout in names and in one shape: its layer scales ``layer_scale_1/2`` are
(C, 1, 1) where the native ``ls1.gamma``/``ls2.gamma`` are (C,). So a key rename alone does not load an upstream
checkpoint: the checkpoint reader applies ``KEY_MAPPERS[layout]`` (the rename, ``ModelFamily.layouts``) and then
``native_value(native_key, tensor)`` (the reshape, ``ModelFamily.native_value``; a no-op for every other key and
for timm checkpoints). ``to_native(state, layout)`` is the same two steps for a state dict already in memory.
``attention_bias_idxs``, which upstream stores, keeps its place in the renamed dict
(``...token_mixer.attention_bias_idxs``, ``...downsample.attn.attention_bias_idxs``): it is a derived key,
checked against the model's own indices rather than loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plain key functions: importing them needs no torch
    import torch

UPSTREAM = "upstream"
TIMM = "timm"

_CONV_BN = {"0": "conv", "1": "bn"}  # upstream Sequential(conv, bn)
_ACT_CONV_BN = {"1": "conv", "2": "bn"}  # upstream projections: Sequential(act, conv, bn)
_STEM = {"0": "conv1.conv", "1": "conv1.bn", "3": "conv2.conv", "4": "conv2.bn"}  # 2 and 5 are the GELUs
_MLP = {"fc1": "fc1.conv", "norm1": "fc1.bn", "mid": "mid.conv", "mid_norm": "mid.bn",
        "fc2": "fc2.conv", "norm2": "fc2.bn"}
_LAYER_SCALE = {"layer_scale_1": "ls1.gamma", "layer_scale_2": "ls2.gamma"}
_DOWNSAMPLE_CONV = {"proj": "conv.conv", "norm": "conv.bn", "conv": "conv.conv", "bn": "conv.bn"}

# Keys only V2 has (V1 has no depthwise FFN conv, talking heads, strided or downsampling attention, ConvNorm).
_UPSTREAM_V2_SIGNS = re.compile(r"\.mlp\.mid(_norm)?\.|\.talking_head[12]\.|\.stride_conv\.|\.attn\.q\.local\.")
_TIMM_V2_SIGNS = re.compile(r"^stem\.conv[12]\.conv\.|\.mlp\.(fc1|mid|fc2)\.conv\.|\.talking_head[12]\.|"
                            r"\.downsample\.conv\.conv\.")


def _attention_key(rest: str) -> str:
    """Within an upstream Attention4D or Attention4DDownsample: ``q.0.weight`` -> ``q.conv.weight``,
    ``q.local.0.bias`` -> ``q.local.bias``, ``q.proj.1.weight`` -> ``q.proj.bn.weight``, ``proj.2.bias`` ->
    ``proj.bn.bias``; biases, their indices and the talking heads keep their names."""
    if m := re.fullmatch(r"(q|k|v|v_local|stride_conv|q\.proj)\.([01])\.(.+)", rest):
        return f"{m[1]}.{_CONV_BN[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"q\.local\.0\.(.+)", rest):
        return f"q.local.{m[1]}"
    if m := re.fullmatch(r"proj\.([12])\.(.+)", rest):
        return f"proj.{_ACT_CONV_BN[m[1]]}.{m[2]}"
    return rest


def _block_key(rest: str) -> str:
    """Within an upstream FFN or AttnFFN block."""
    if rest in _LAYER_SCALE:
        return _LAYER_SCALE[rest]
    if m := re.fullmatch(r"mlp\.(fc1|norm1|mid|mid_norm|fc2|norm2)\.(.+)", rest):
        return f"mlp.{_MLP[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"token_mixer\.(.+)", rest):
        return f"token_mixer.{_attention_key(m[1])}"
    return rest


def upstream_key_to_native(key: str) -> str:
    """``patch_embed.3.weight`` -> ``stem.conv2.conv.weight``; ``network.4.4.token_mixer.v.1.bias`` ->
    ``stages.2.blocks.4.token_mixer.v.bn.bias``; ``network.1.norm.weight`` -> ``stages.1.downsample.conv.bn.weight``;
    ``network.5.attn.q.local.0.weight`` -> ``stages.3.downsample.attn.q.local.weight``; ``dist_head.bias`` ->
    ``head_dist.bias``. A key that fits no rule is returned as it is (and so reported as unexpected)."""
    if m := re.fullmatch(r"patch_embed\.(\d+)\.(.+)", key):
        return f"stem.{_STEM[m[1]]}.{m[2]}" if m[1] in _STEM else key
    if m := re.fullmatch(r"network\.(\d+)\.(\d+)\.(.+)", key):
        if int(m[1]) % 2:
            return key  # odd entries are downsamples, which hold no numbered blocks
        return f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{_block_key(m[3])}"
    if m := re.fullmatch(r"network\.(\d+)\.(proj|norm|conv|bn)\.(.+)", key):
        if int(m[1]) % 2 == 0:
            return key
        return f"stages.{(int(m[1]) + 1) // 2}.downsample.{_DOWNSAMPLE_CONV[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"network\.(\d+)\.attn\.(.+)", key):
        if int(m[1]) % 2 == 0:
            return key
        return f"stages.{(int(m[1]) + 1) // 2}.downsample.attn.{_attention_key(m[2])}"
    if key.startswith("dist_head."):
        return "head_dist." + key.removeprefix("dist_head.")
    return key


def timm_key_to_native(key: str) -> str:
    """timm's layout is the native one."""
    return key


KEY_MAPPERS: dict[str, Callable[[str], str]] = {UPSTREAM: upstream_key_to_native, TIMM: timm_key_to_native}


def native_value(native_key: str, value: torch.Tensor) -> torch.Tensor:
    """The tensor as the native model holds it under ``native_key``: upstream's (C, 1, 1) layer scales become
    (C,); everything else (and any other shape, left for the shape check to report) is returned as it is."""
    if native_key.endswith((".ls1.gamma", ".ls2.gamma")) and value.dim() == 3 and value.shape[1:] == (1, 1):
        return value.reshape(-1)
    return value


def to_native(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A state dict of ``layout`` (``upstream`` or ``timm``) in the native layout: keys renamed, layer scales
    reshaped. Raises ValueError when two keys land on one name (the checkpoint mixes layouts)."""
    rename = KEY_MAPPERS[layout]
    native: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = rename(key)
        if new in native:
            raise ValueError(f"keys {origin[new]!r} and {key!r} both mean {new!r}")
        native[new], origin[new] = native_value(new, value), key
    return native


def upstream_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An upstream (snap-research) V2 state dict in the native layout; see ``to_native``."""
    return to_native(state, UPSTREAM)


def detect_layout(keys: Iterable[str]) -> str | None:
    """``upstream`` or ``timm`` for EfficientFormerV2 keys; None for anything else, V1 checkpoints included.

    A layout is claimed only when a key only V2 has is there (depthwise FFN conv, talking heads, strided or
    downsampling attention; in timm's layout also the ConvNorm ``.conv.conv``-style names), so V1 keys, which
    share the ``patch_embed.``/``network.`` and ``stem.``/``stages.`` prefixes, are never taken for V2.
    """
    keys = list(keys)
    if any(k.startswith(("patch_embed.", "network.")) for k in keys) and any(_UPSTREAM_V2_SIGNS.search(k)
                                                                             for k in keys):
        return UPSTREAM
    if any(k.startswith(("stem.", "stages.")) for k in keys) and any(_TIMM_V2_SIGNS.search(k) for k in keys):
        return TIMM
    return None
