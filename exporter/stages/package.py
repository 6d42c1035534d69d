"""Package stage: the manifest, the model's own metadata, file hashes, and a verification of the result."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import (
    MANIFEST_SCHEMA,
    REFERENCE_FILE,
    file_table,
    metadata_entries,
    sha256_of,
    tool_versions,
    write_manifest,
)
from efexport.exporter.manifest_schema import check_manifest
from efexport.exporter.model_card import CARD_FILE, model_card
from efexport.exporter.models.efficientformer import EfficientFormerConfig
from efexport.exporter.preprocessing import IMAGENET
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.stages.fold import FoldedModel
from efexport.exporter.stages.load import LoadedModel
from efexport.exporter.targets.base import ExportedModel, Target
from efexport.validate.latency import LatencyReport
from efexport.validate.parity import ParityReport

PUBLISHED_SOURCE = "EfficientFormer paper (Li et al., NeurIPS 2022), Table 1, and the snap-research README"


def published_figures(cfg: EfficientFormerConfig) -> dict:
    """The paper's figures for this variant, marked as published: none of them was measured by efexport."""
    return {"status": "published, not measured here", "source": PUBLISHED_SOURCE,
            "params_m": cfg.published_params_m, "gmacs": cfg.published_gmacs,
            "imagenet_top1_percent": cfg.published_top1,
            "latency_ms": {"device": "iPhone 12", "runtime": "Core ML, all compute units",
                           "value": cfg.published_iphone12_ms}}


def package_identity(variant: str, target_facts: dict, random_init: bool) -> dict:
    """The package's name and whether it may be deployed; the reasons say why not."""
    reasons = []
    if random_init:
        reasons.append("random-init weights: the model computes nothing meaningful")
    engine = target_facts.get("engine")
    if engine is not None and not engine.get("built"):
        reasons.append(f"no TensorRT engine was built ({engine.get('reason', 'unknown reason')})")
    name = f"efficientformer-{variant}-{target_facts['format']}-{target_facts['precision']}"
    return {"name": name, "deployable": not reasons, "not_deployable_because": reasons}


def recipe_facts(recipe: Recipe, source: str) -> dict:
    """The recipe as used (file values with the flags applied), and which file it came from (name and sha256:
    an absolute path would differ per machine and say nothing)."""
    path = Path(source)
    digest = sha256_of(path) if path.is_file() else None
    return {"file": path.name, "file_sha256": digest, "values": recipe.model_dump()}


def build_manifest(loaded: LoadedModel, folded: FoldedModel, captured: CapturedGraph, exported: ExportedModel,
                   parity: ParityReport, latency: list[LatencyReport], recipe: Recipe, recipe_source: str) -> dict:
    """Every fact about the artifact, as plain JSON types; ``files`` is added once the files are final."""
    cfg = loaded.model.cfg
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "package": package_identity(loaded.variant, exported.facts, loaded.is_random),
        "model": {"family": "EfficientFormer", "version": "v1", "variant": loaded.variant,
                  "parameters": sum(p.numel() for p in loaded.model.parameters()),
                  "num_classes": cfg.num_classes,
                  "class_labels": "ImageNet-1k, index order (exporter/data/imagenet1k_labels.txt)",
                  "published": published_figures(cfg)},
        "weights": loaded.weights,
        "preprocessing": replace(IMAGENET, input_size=recipe.export.image_size).describe(),
        "inputs": [spec.describe() for spec in captured.inputs],
        "outputs": [spec.describe() for spec in captured.outputs],
        "target": exported.facts,
        "fold": folded.report() | {"max_abs_allowed": recipe.fold.max_abs},
        "parity": parity.to_dict() | {"reference_file": REFERENCE_FILE,
                                      "compared_against": "unfolded PyTorch model (eval, float32)"},
        "latency": [report.to_dict() for report in latency],
        "versions": tool_versions(),
        "recipe": recipe_facts(recipe, recipe_source),
    }
    return json.loads(json.dumps(manifest))


def package(staging: Path, manifest: dict, target: Target, exported: ExportedModel, threads: int) -> dict:
    """Embed the metadata, write the model card, hash every file, write manifest.json (checked against its
    schema), then verify the directory as a user would."""
    from efexport.exporter.verify import verify_artifact

    target.embed_metadata(exported.path, metadata_entries(manifest))
    card = model_card(manifest | {"files": file_table(staging)})  # lists every file but itself
    (staging / CARD_FILE).write_text(card)
    manifest = manifest | {"files": file_table(staging)}
    check_manifest(manifest, "the manifest written by this export")
    write_manifest(staging, manifest)
    check = verify_artifact(staging, threads)
    if not check.passed:
        raise VerifyError("the packaged artifact failed its own verification: " + "; ".join(check.problems))
    return manifest
