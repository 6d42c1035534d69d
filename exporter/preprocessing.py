"""How to feed the model, described as data (stored in every manifest and model card)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    input_size: int
    color_order: str = "RGB"
    layout: str = "NCHW"
    value_range: str = "pixels / 255, then (x - mean) / std"

    @property
    def resize_shorter_side(self) -> int:
        return int(self.input_size / self.crop_pct)

    def describe(self) -> dict:
        return asdict(self) | {"resize_shorter_side": self.resize_shorter_side, "center_crop": self.input_size}


# Upstream's evaluation transform (timm's config uses crop_pct 0.95 instead).
IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         interpolation="bicubic", crop_pct=0.9, input_size=224)
