"""Test helpers for EfficientFormerV2: realistic models and their weights in each checkpoint layout."""

from __future__ import annotations

import functools
import json

import torch

from efexport.exporter.models.efficientformer_v2 import EfficientFormerV2, build_model
from efexport.exporter.models.layouts_v2 import upstream_key_to_native
from efexport.exporter.models.random_weights_v2 import randomize_realistically
from tests.helpers import STATE_DICTS
from tests.upstream_reference_v2 import UpstreamEfficientFormerV2


@functools.cache
def _realistic_state(variant: str, seed: int) -> dict[str, torch.Tensor]:
    return randomize_realistically(build_model(variant), seed).state_dict()


def realistic_model_v2(variant: str, seed: int = 0) -> EfficientFormerV2:
    """A fresh eval-mode model with trained-like random weights (cached per variant and seed)."""
    model = build_model(variant)
    model.load_state_dict(_realistic_state(variant, seed))
    return model.eval()


def reference_layout_v2(variant: str, layout: str) -> dict[str, list[int]]:
    """Key -> shape of a real upstream or timm V2 checkpoint (tests/data/state-dicts), in the file's order."""
    name = f"v2-{variant}.json" if layout == "upstream" else f"v2-{variant}-timm.json"
    return {k: shape for k, (shape, _dtype) in json.loads((STATE_DICTS / name).read_text())["keys"].items()}


def upstream_state_dict_v2(model: EfficientFormerV2) -> dict[str, torch.Tensor]:
    """The model's weights exactly as an upstream (snap-research) V2 checkpoint holds them: upstream's keys and
    order, (C, 1, 1) layer scales, and ``attention_bias_idxs`` as upstream builds them (from the independent
    re-statement, not from the model under test)."""
    state = model.state_dict()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UpstreamEfficientFormerV2(model.cfg.variant).state_dict().items()}
    upstream_idxs = _upstream_bias_indices(model.cfg.variant)
    out = {}
    for key in reference_layout_v2(model.cfg.variant, "upstream"):
        if key.endswith("attention_bias_idxs"):
            out[key] = upstream_idxs[key].clone()
        else:
            out[key] = state[upstream_key_to_native(key)].reshape(shapes[key]).clone()
    return out


@functools.cache
def _upstream_bias_indices(variant: str) -> dict[str, torch.Tensor]:
    reference = UpstreamEfficientFormerV2(variant)
    return {k: v for k, v in reference.state_dict().items() if k.endswith("attention_bias_idxs")}


def upstream_reference_v2(model: EfficientFormerV2) -> UpstreamEfficientFormerV2:
    """A freshly built upstream re-statement holding ``model``'s weights, in eval mode."""
    reference = UpstreamEfficientFormerV2(model.cfg.variant)
    reference.load_state_dict(upstream_state_dict_v2(model), strict=True)
    return reference.eval()
