"""Synthetic inputs: smooth, picture-like images, normalised as the model expects."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from efexport.exporter.preprocessing import IMAGENET


def image_like(gen: torch.Generator, size: int) -> torch.Tensor:
    """A smooth 8-bit RGB picture scaled to [0, 1]: coarse random colour blobs upsampled, a gradient, an edge."""
    coarse = torch.rand(1, 3, 7, 7, generator=gen)
    picture = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    ramp = torch.linspace(0, 1, size)
    picture = picture + 0.3 * ramp.view(1, 1, -1) * torch.rand(3, 1, 1, generator=gen)
    edge = int(torch.randint(size // 4, 3 * size // 4, (1,), generator=gen))
    picture[:, edge:, :] *= 0.6
    return (picture.clamp(0, 1) * 255).round() / 255  # 8-bit, as a decoded image: a Core ML image input can take it


def normalised_images(gen: torch.Generator, count: int, size: int = 224) -> torch.Tensor:
    """(count, 3, size, size) image-like inputs after ImageNet normalisation."""
    mean = torch.tensor(IMAGENET.mean).view(3, 1, 1)
    std = torch.tensor(IMAGENET.std).view(3, 1, 1)
    images = [(image_like(gen, size) - mean) / std for _ in range(count)]
    return torch.stack(images) if images else torch.empty(0, 3, size, size)
