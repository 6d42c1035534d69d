"""Package stage: the manifest, the model's own metadata, file hashes, and a verification of the result."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from exporter.errors import VerifyError
from exporter.manifest import (
    MANIFEST_SCHEMA,
    REFERENCE_FILE,
    file_table,
    metadata_entries,
    tool_versions,
    write_manifest,
)
from exporter.preprocessing import IMAGENET
from exporter.recipes import Recipe
from exporter.stages.capture import CapturedGraph
from exporter.stages.fold import FoldedModel
from exporter.stages.load import LoadedModel
from exporter.targets.base import ExportedModel, Target
from validate.latency import LatencyReport
from validate.parity import ParityReport


def build_manifest(loaded: LoadedModel, folded: FoldedModel, captured: CapturedGraph, exported: ExportedModel,
                   parity: ParityReport, latency: list[LatencyReport], recipe: Recipe, recipe_source: str) -> dict:
    """Every fact about the artifact, as plain JSON types; ``files`` is added once the files are final."""
    cfg = loaded.model.cfg
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "model": {"family": "EfficientFormer", "version": "v1", "variant": loaded.variant,
                  "parameters": sum(p.numel() for p in loaded.model.parameters()),
                  "published": {"params_m": cfg.published_params_m, "gmacs": cfg.published_gmacs,
                                "note": "published, not measured"}},
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
        "recipe": {"source": recipe_source, "values": recipe.model_dump()},
    }
    return json.loads(json.dumps(manifest))


def package(staging: Path, manifest: dict, target: Target, exported: ExportedModel, threads: int) -> dict:
    """Embed the metadata, hash every file, write manifest.json, then verify the directory as a user would."""
    from exporter.verify import verify_artifact

    target.embed_metadata(exported.path, metadata_entries(manifest))
    manifest = manifest | {"files": file_table(staging)}
    write_manifest(staging, manifest)
    check = verify_artifact(staging, threads)
    if not check.passed:
        raise VerifyError("the packaged artifact failed its own verification: " + "; ".join(check.problems))
    return manifest
