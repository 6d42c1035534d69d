"""Checkpoint layouts: key renames from upstream (snap-research) and timm to the native layout.

The native layout is timm's, less ``attention_bias_idxs`` (derived, not stored). Every key and shape of
both layouts is recorded in the test data (``tests/data/state-dicts/``).
"""

from __future__ import annotations

import re

UPSTREAM = "upstream"
TIMM = "timm"

_UPSTREAM_STEM = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_UPSTREAM_LAYER_SCALE = {"layer_scale_1": "ls1.gamma", "layer_scale_2": "ls2.gamma"}
_UPSTREAM_DOWNSAMPLE = {"proj": "conv", "norm": "norm"}


def upstream_key_to_native(key: str) -> str:
    """``patch_embed.3.weight`` -> ``stem.conv2.weight``; ``network.6.4.layer_scale_1`` ->
    ``stages.3.blocks.4.ls1.gamma``; ``network.5.proj.bias`` -> ``stages.3.downsample.conv.bias``."""
    if m := re.fullmatch(r"patch_embed\.(\d+)\.(.+)", key):
        return f"stem.{_UPSTREAM_STEM.get(m[1], m[1])}.{m[2]}"
    if m := re.fullmatch(r"network\.(\d+)\.(\d+)\.(.+)", key):
        stage, rest = int(m[1]) // 2, m[3]
        return f"stages.{stage}.blocks.{m[2]}.{_UPSTREAM_LAYER_SCALE.get(rest, rest)}"
    if m := re.fullmatch(r"network\.(\d+)\.(proj|norm)\.(.+)", key):
        stage = (int(m[1]) + 1) // 2
        return f"stages.{stage}.downsample.{_UPSTREAM_DOWNSAMPLE[m[2]]}.{m[3]}"
    if key.startswith("dist_head."):
        return "head_dist." + key.removeprefix("dist_head.")
    return key


def timm_key_to_native(key: str) -> str:
    return key


KEY_MAPPERS = {UPSTREAM: upstream_key_to_native, TIMM: timm_key_to_native}


def detect_layout(keys: list[str]) -> str | None:
    """upstream, timm, or None when neither layout's signature keys are there or when keys only V2 has are
    (the two generations share the prefixes; V2 is its own family)."""
    if looks_like_efficientformer_v2(keys):
        return None
    if any(k.startswith(("patch_embed.", "network.")) for k in keys):
        return UPSTREAM
    if any(k.startswith(("stem.", "stages.")) for k in keys):
        return TIMM
    return None


def looks_like_efficientformer_v2(keys: list[str]) -> bool:
    """V2 blocks have a depthwise mid conv in the FFN and talking-head attention; V1 has neither."""
    return any(".mlp.mid" in k or "talking_head" in k or ".mlp.mid_norm" in k for k in keys)
