"""Model families, registered in one place (the FAMILIES line below); importing this module imports no torch.

Each family is a module declaring ``FAMILY`` (see ``efexport.exporter.models.family``): its config table, model,
checkpoint layouts, realistic random weights, preprocessing and published figures.
"""

from __future__ import annotations

from efexport.exporter.models.family import FamilyEntry, ModelFamily

FAMILIES: tuple[FamilyEntry, ...] = (
    FamilyEntry("efficientformer", "EfficientFormer V1", "EfficientFormer", "v1", ("l1", "l3", "l7"),
                {"efficientformer_l1": "l1", "efficientformer_l3": "l3", "efficientformer_l7": "l7"},
                "efexport.exporter.models.efficientformer_family"),
    FamilyEntry("efficientformerv2", "EfficientFormerV2", "EfficientFormerV2", "v2", ("s0", "s1", "s2", "l"),
                {"efficientformerv2_s0": "s0", "efficientformerv2_s1": "s1", "efficientformerv2_s2": "s2",
                 "efficientformerv2_l": "l"},
                "efexport.exporter.models.efficientformer_v2_family"),
)


def variant_choices() -> tuple[str, ...]:
    """Every name ``--variant`` takes: each family's variants, then the other names users type for them."""
    return tuple(v for entry in FAMILIES for v in entry.variants) + \
        tuple(alias for entry in FAMILIES for alias in entry.aliases)


def family_of(variant: str) -> FamilyEntry:
    """The registered family a canonical variant name belongs to (KeyError if none)."""
    for entry in FAMILIES:
        if variant in entry.variants:
            return entry
    raise KeyError(variant)


def find_variant(name: str) -> tuple[FamilyEntry, str] | None:
    """The family entry and canonical variant for a name users type (``l1``, ``efficientformer_l1``), or None."""
    for entry in FAMILIES:
        if name in entry.variants:
            return entry, name
        if name in entry.aliases:
            return entry, entry.aliases[name]
    return None


__all__ = ["FAMILIES", "FamilyEntry", "ModelFamily", "family_of", "find_variant", "variant_choices"]
