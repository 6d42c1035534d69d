"""Load stage: a checkpoint (or a seed) in, an eval-mode EfficientFormer and a description of its weights out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from efexport.exporter.errors import CheckpointError
from efexport.exporter.models.checkpoint import load_into_model, read_checkpoint
from efexport.exporter.models.efficientformer import VARIANTS, EfficientFormer, build_model
from efexport.exporter.models.random_weights import randomize_realistically

RANDOM_INIT = "random-init"


@dataclass
class LoadedModel:
    model: EfficientFormer
    variant: str
    weights: dict  # {"source": "checkpoint", sha256, ...} or {"source": "random-init", "seed": N}

    @property
    def is_random(self) -> bool:
        return self.weights["source"] == RANDOM_INIT


def resolve_variant(variant: str | None) -> str | None:
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


def load_model(weights: Path | None, variant: str | None, seed: int) -> LoadedModel:
    variant = resolve_variant(variant)
    if weights is None:
        if variant is None:
            raise CheckpointError("--variant is required without --weights (nothing to identify it from)")
        model = randomize_realistically(build_model(variant), seed)
        return LoadedModel(model, variant, {"source": RANDOM_INIT, "seed": seed})
    checkpoint = read_checkpoint(weights)
    model, variant = load_into_model(checkpoint, variant)
    return LoadedModel(model, variant, checkpoint.describe())
