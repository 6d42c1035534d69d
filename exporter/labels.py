"""Class labels for a classifier package: the bundled ImageNet-1k names or a text file, one label per line."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

from efexport.exporter.errors import InputSpecError

IMAGENET_1K = "imagenet-1k"


def read_labels(source: str, num_classes: int) -> list[str]:
    """One distinct label per output class, from ``imagenet-1k`` (bundled) or a text file (blank lines skipped);
    an InputSpecError names the file and what is wrong with it."""
    if source == IMAGENET_1K:
        text = resources.files("efexport.exporter.data").joinpath("imagenet1k_labels.txt").read_text()
    else:
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputSpecError(f"labels file {source}: cannot read it ({exc})") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != num_classes:
        raise InputSpecError(f"labels {source}: {len(labels)} labels, but the model has {num_classes} classes")
    duplicates = sorted(label for label, count in Counter(labels).items() if count > 1)
    if duplicates:
        # Core ML's classifier keys its probabilities by label; an app looking a label up needs one class per label
        raise InputSpecError(f"labels {source}: duplicate labels {duplicates[:3]} (each class needs its own label)")
    return labels
