"""The input geometry EfficientFormer takes, without torch: recipes check image sizes before torch loads."""

from __future__ import annotations


def final_token_grid(image_size: int) -> int:
    """Side of the last stage's token grid for a square input: a stride-4 stem, then three stride-2 convs."""
    side = image_size
    for _ in range(5):  # two stem convs and three downsamples, each conv3x3 s2 p1
        side = (side - 1) // 2 + 1
    return side
