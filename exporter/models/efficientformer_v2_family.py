"""The EfficientFormerV2 family (s0, s1, s2, l), declared for the registry in ``efexport.exporter.models``.

The model and its config table are in ``efficientformer_v2.py``, the checkpoint key mappings in
``layouts_v2.py``, trained-like random weights in ``random_weights_v2.py``; this module puts them together.

Upstream checkpoints need more than a key rename: their layer scales are (C, 1, 1) where the native model's are
(C,). ``layouts`` holds the renames and ``native_value`` the reshape the checkpoint reader applies after them.
"""

from __future__ import annotations

from dataclasses import replace

from efexport.exporter.models.efficientformer_v2 import CONFIGS, build_model
from efexport.exporter.models.family import ModelFamily
from efexport.exporter.models.layouts_v2 import KEY_MAPPERS, detect_layout, native_value
from efexport.exporter.models.random_weights_v2 import randomize_realistically
from efexport.exporter.preprocessing import IMAGENET, Preprocessing

# Upstream's evaluation transform for every variant (crop_pct 0.9 in its model configs; timm's uses 0.95).
PREPROCESSING: dict[str, Preprocessing] = {variant: IMAGENET for variant in CONFIGS}


def preprocessing(variant: str, image_size: int | None = None) -> Preprocessing:
    """How to feed ``variant``; ``image_size`` when the recipe asks for another size (one the model accepts:
    209 to 224, where stage 2 is still a 14x14 grid)."""
    chosen = PREPROCESSING[variant]
    return replace(chosen, input_size=image_size) if image_size else chosen


FAMILY = ModelFamily(
    name="efficientformerv2",
    display_name="EfficientFormerV2",
    version="v2",
    title="EfficientFormerV2",
    configs=CONFIGS,
    build=build_model,
    randomize=randomize_realistically,
    layouts=KEY_MAPPERS,
    detect_layout=detect_layout,
    preprocessing=preprocessing,
    image_sizes=(209, 224),  # stage 2 at 14x14 (efficientformer_v2.grid_before_last_stage), so 7x7 after it
    published_source="EfficientFormerV2 paper (Li et al., \"Rethinking Vision Transformers for MobileNet Size and "
                     "Speed\", ICCV 2023) and the snap-research README",
    derived_keys=("attention_bias_idxs",),
    native_value=native_value,
)
