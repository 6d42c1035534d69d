"""Load stage: a checkpoint (or a seed) in, an eval-mode model of a registered family and a description of its
weights out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from efexport.exporter.errors import CheckpointError
from efexport.exporter.models import FAMILIES, find_variant, variant_choices
from efexport.exporter.models.checkpoint import load_into_model, read_checkpoint
from efexport.exporter.models.family import ModelFamily

RANDOM_INIT = "random-init"


@dataclass
class LoadedModel:
    model: nn.Module
    family: ModelFamily
    variant: str
    weights: dict  # {"source": "checkpoint", sha256, ...} or {"source": "random-init", "seed": N}

    @property
    def is_random(self) -> bool:
        return self.weights["source"] == RANDOM_INIT

    @property
    def package_name(self) -> str:
        """``efficientformer-l1``: the folder of this model's packages under the output root."""
        return self.family.package_name(self.variant)


def resolve_variant(variant: str | None) -> tuple[ModelFamily | None, str | None]:
    """The family and canonical variant of a name users type (None, None when not given)."""
    if variant is None:
        return None, None
    found = find_variant(variant)
    if found is None:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {', '.join(variant_choices())}")
    entry, name = found
    return entry.load(), name


def load_model(weights: Path | None, variant: str | None, seed: int) -> LoadedModel:
    family, variant = resolve_variant(variant)
    if weights is None:
        if family is None or variant is None:
            raise CheckpointError("--variant is required without --weights (nothing to identify it from)")
        model = family.randomize(family.build(variant), seed)
        return LoadedModel(model, family, variant, {"source": RANDOM_INIT, "seed": seed})
    # the checkpoint's keys name its family; a --variant of another family is then a mismatch, said by name
    checkpoint = read_checkpoint(weights, [entry.load() for entry in FAMILIES])
    if family is not None and family.name != checkpoint.family.name:
        raise CheckpointError(f"{weights}: this is an {checkpoint.family.title} checkpoint, not {family.title} "
                              f"({variant}); drop --variant, or pass one of {', '.join(checkpoint.family.variants)}")
    model, variant = load_into_model(checkpoint, variant)
    return LoadedModel(model, checkpoint.family, variant, checkpoint.describe())
