"""The EfficientFormer V1 family (l1, l3, l7), declared for the registry in ``efexport.exporter.models``.

The model and its config table are in ``efficientformer.py``, the checkpoint key mappings in ``layouts.py``,
trained-like random weights in ``random_weights.py``; this module puts them together.
"""

from __future__ import annotations

from dataclasses import replace

from efexport.exporter.models.efficientformer import CONFIGS, build_model
from efexport.exporter.models.family import ModelFamily
from efexport.exporter.models.layouts import KEY_MAPPERS, detect_layout
from efexport.exporter.models.random_weights import randomize_realistically
from efexport.exporter.preprocessing import IMAGENET, Preprocessing

# Upstream's evaluation transform for every variant (timm's config uses crop_pct 0.95 instead).
PREPROCESSING: dict[str, Preprocessing] = {variant: IMAGENET for variant in CONFIGS}


def preprocessing(variant: str, image_size: int | None = None) -> Preprocessing:
    """How to feed ``variant``; ``image_size`` when the recipe asks for another (still 7x7-grid) input size."""
    chosen = PREPROCESSING[variant]
    return replace(chosen, input_size=image_size) if image_size else chosen


FAMILY = ModelFamily(
    name="efficientformer",
    display_name="EfficientFormer",
    version="v1",
    title="EfficientFormer V1",
    configs=CONFIGS,
    build=build_model,
    randomize=randomize_realistically,
    layouts=KEY_MAPPERS,
    detect_layout=detect_layout,
    preprocessing=preprocessing,
    image_sizes=(193, 224),  # a 7x7 last-stage grid (geometry.final_token_grid)
    published_source="EfficientFormer paper (Li et al., NeurIPS 2022), Table 1, and the snap-research README",
    derived_keys=("attention_bias_idxs",),
)
