"""Image files as model inputs: found in a folder, decoded by Pillow, preprocessed exactly as a package's
``preprocessing`` block says (resize the shorter side, centre crop, scale to [0, 1], normalise).

Calibration (``--calibration DIR``) and ``efexport evaluate`` read images through here, so what a quantized
model is calibrated on and what it is evaluated on are made the way a deployment feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from efexport.exporter.errors import InputSpecError
from efexport.exporter.preprocessing import Preprocessing

# What Pillow decodes; other files in a folder (a README, a labels file) are not images and are skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}

# A decompression bomb is refused by Pillow's own limit (Image.MAX_IMAGE_PIXELS), raised as an error below.


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by suffix), sorted by path so every run sees the same order."""
    if not folder.is_dir():
        raise InputSpecError(f"{folder}: not a folder of images")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """(3, S, S) float32: ``path`` decoded as RGB, shorter side resized to ``resize_shorter_side`` with the
    recipe's interpolation, centre-cropped to ``input_size``, scaled to [0, 1] and normalised."""
    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InputSpecError(f"{path}: not an image Pillow can read: {exc}") from None
    shorter = preprocessing.resize_shorter_side
    width, height = picture.size
    scale = shorter / min(width, height)
    resized = picture.resize((max(shorter, round(width * scale)), max(shorter, round(height * scale))),
                             _RESAMPLING[preprocessing.interpolation])
    size = preprocessing.input_size
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1).astype(np.float32)


def load_images(paths: Iterable[Path], preprocessing: Preprocessing) -> np.ndarray:
    """(N, 3, S, S) float32 of ``paths``, each as ``load_image`` makes it."""
    arrays = [load_image(path, preprocessing) for path in paths]
    size = preprocessing.input_size
    return np.stack(arrays) if arrays else np.empty((0, 3, size, size), np.float32)
