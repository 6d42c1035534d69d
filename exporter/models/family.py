"""A model family: everything efexport knows about one architecture, declared in one object.

Two levels, so that the command line can list and check variant names without importing torch:

* ``FamilyEntry`` (light): the family's name, its variants and the other names users type for them, and the
  module that declares the full family. The registry in ``efexport.exporter.models`` lists these.
* ``ModelFamily`` (the module's ``FAMILY``): the config table, the model builder, realistic random weights,
  checkpoint layouts and their key mappings, derived keys, preprocessing and published figures per variant.

A new family is one module declaring ``FAMILY`` (plus its model and layout code) and one ``FamilyEntry`` line in
the registry; tests/test_families.py checks that the two agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from efexport.exporter.preprocessing import Preprocessing


def package_name(family: str, variant: str) -> str:
    """The folder and package-name prefix of a variant: ``efficientformer-l3``."""
    return f"{family}-{variant}"


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family as the command line sees it (no torch import)."""

    name: str  # package names are "<name>-<variant>", e.g. efficientformer-l1
    title: str  # for people: "EfficientFormer V1"
    display_name: str  # the manifest's model.family, e.g. "EfficientFormer"
    version: str  # the manifest's model.version, e.g. "v1"
    variants: tuple[str, ...]
    aliases: Mapping[str, str]  # other names users type (timm's model names) -> variant
    module: str  # the module whose FAMILY is this family's ModelFamily

    def package_name(self, variant: str) -> str:
        return package_name(self.name, variant)

    def load(self) -> ModelFamily:
        family = importlib.import_module(self.module).FAMILY
        declared = (family.name, family.title, family.display_name, family.version, tuple(family.configs))
        if declared != (self.name, self.title, self.display_name, self.version, self.variants):
            raise RuntimeError(f"{self.module}.FAMILY does not match its registry entry {self.name!r}")
        return family


@dataclass(frozen=True)
class ModelFamily:
    """One architecture: what loading, random weights, checkpoints, manifests and model cards need of it."""

    name: str  # as in its FamilyEntry
    display_name: str  # the manifest's model.family, e.g. "EfficientFormer"
    version: str  # the manifest's model.version, e.g. "v1"
    title: str  # for people, as in its FamilyEntry: "EfficientFormer V1", "EfficientFormerV2"
    configs: Mapping[str, Any]  # variant -> config (published_* figures included)
    build: Callable[[str], nn.Module]  # a freshly initialised model of a variant
    randomize: Callable[[nn.Module, int], nn.Module]  # trained-like random weights, deterministic per seed
    layouts: Mapping[str, Callable[[str], str]]  # checkpoint layout -> key rename to the native layout
    detect_layout: Callable[[list[str]], str | None]  # which layout holds these keys; None: not this family
    preprocessing: Callable[..., Preprocessing]  # (variant, image_size=None) -> how to feed it
    image_sizes: tuple[int, int]  # the square input sides the model computes correctly, inclusive
    published_source: str  # where the published figures come from
    derived_keys: tuple[str, ...] = ()  # state-dict entries the model derives and a checkpoint may carry
    # (native key, tensor) -> the tensor as the model holds it, after the rename (V2's (C, 1, 1) layer scales)
    native_value: Callable[[str, Any], Any] | None = None
    class_labels: str = "ImageNet-1k, index order (exporter/data/imagenet1k_labels.txt)"
    extra: dict = field(default_factory=dict)

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.configs)

    def package_name(self, variant: str) -> str:
        return package_name(self.name, variant)

    def image_size_problem(self, image_size: int) -> str | None:
        """Why this family cannot take ``image_size`` x ``image_size`` inputs (None when it can)."""
        low, high = self.image_sizes
        if low <= image_size <= high:
            return None
        return (f"image size {image_size} is not supported by {self.title}: its attention biases are built for the "
                f"token grids a {high}x{high} input gives, which sizes {low}-{high} reach")

    def published(self, variant: str) -> dict:
        """The paper's figures for ``variant``, marked as published: efexport measured none of them."""
        cfg = self.configs[variant]
        return {"status": "published, not measured here", "source": self.published_source,
                "params_m": cfg.published_params_m, "gmacs": cfg.published_gmacs,
                "imagenet_top1_percent": cfg.published_top1,
                "latency_ms": {"device": "iPhone 12", "runtime": "Core ML, all compute units",
                               "value": cfg.published_iphone12_ms}}
