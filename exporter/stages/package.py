"""Package stage: the manifest, the model's own metadata, file hashes, and a verification of the result."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

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
from efexport.exporter.manifest_model import (
    CaptureFacts,
    FoldReport,
    LatencyEntry,
    ManifestFacts,
    ModelFacts,
    PackageIdentity,
    ParityGate,
    PreprocessingFacts,
    PublishedFigures,
    QuantizationFacts,
    RecipeFacts,
    TensorSpec,
    ToolVersions,
    dump_manifest,
    not_deployable_reasons,
    target_block,
    weights_block,
)
from efexport.exporter.manifest_schema import check_manifest
from efexport.exporter.model_card import CARD_FILE, model_card
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.stages.fold import FoldedModel
from efexport.exporter.stages.load import LoadedModel
from efexport.exporter.targets.base import ExportedModel, Target
from efexport.validate.latency import LatencyReport
from efexport.validate.parity import ParityReport

if TYPE_CHECKING:
    from efexport.exporter.verify import ValidatedRun


def package_identity(model_name: str, target_facts: dict, random_init: bool,
                     synthetic_calibration: bool = False) -> dict:
    """The package's name and whether it may be deployed; the reasons say why not."""
    reasons = not_deployable_reasons(random_init, synthetic_calibration, target_facts)
    name = f"{model_name}-{target_facts['format']}-{target_facts['precision']}"
    return {"name": name, "deployable": not reasons, "not_deployable_because": reasons}


def recipe_facts(recipe: Recipe, source: str) -> dict:
    """The recipe as used (file values with the flags applied), and which file it came from (name and sha256:
    an absolute path would differ per machine and say nothing)."""
    path = Path(source)
    digest = sha256_of(path) if path.is_file() else None
    return {"file": path.name, "file_sha256": digest, "values": recipe.model_dump()}


def build_manifest(loaded: LoadedModel, folded: FoldedModel, captured: CapturedGraph, exported: ExportedModel,
                   parity: ParityReport, latency: list[LatencyReport], recipe: Recipe, recipe_source: str,
                   parity_runtime: dict[str, str] | None = None, quantization: dict | None = None) -> dict:
    """Every fact about the artifact, built as the manifest's typed blocks (exporter.manifest_model, which its
    JSON Schema is generated from, so a mistake fails here, naming the block) and dumped as plain JSON types;
    ``files`` is added once the files are final."""
    family, cfg = loaded.family, loaded.model.cfg
    manifest = ManifestFacts(
        schema=MANIFEST_SCHEMA,
        package=PackageIdentity.model_validate(
            package_identity(loaded.package_name, exported.facts, loaded.is_random,
                             bool(quantization and quantization["calibration"]["synthetic"]))),
        model=ModelFacts(family=family.display_name, version=family.version, variant=loaded.variant,
                         parameters=sum(p.numel() for p in loaded.model.parameters()),
                         num_classes=cfg.num_classes,
                         class_labels=family.class_labels,
                         published=PublishedFigures.model_validate(family.published(loaded.variant))),
        weights=weights_block(loaded.weights),
        preprocessing=PreprocessingFacts.model_validate(
            family.preprocessing(loaded.variant, recipe.export.image_size).describe()),
        inputs=[TensorSpec.model_validate(spec.describe()) for spec in captured.inputs],
        outputs=[TensorSpec.model_validate(spec.describe()) for spec in captured.outputs],
        target=target_block(exported.facts),
        fold=FoldReport.model_validate(folded.report() | {"max_abs_allowed": recipe.fold.max_abs}),
        parity=ParityGate.model_validate(parity.to_dict() | {
            "reference_file": REFERENCE_FILE, "compared_against": "unfolded PyTorch model (eval, float32)"}
            | ({"runtime": parity_runtime} if parity_runtime else {})),
        latency=[LatencyEntry.model_validate(report.to_dict()) for report in latency],
        capture=CaptureFacts.model_validate(captured.describe()),  # after export: a target may have traced
        versions=ToolVersions.model_validate(tool_versions()),
        recipe=RecipeFacts.model_validate(recipe_facts(recipe, recipe_source)),
        **({"quantization": QuantizationFacts.model_validate(quantization)} if quantization else {}),
    )
    return dump_manifest(manifest)


def package(staging: Path, manifest: dict, target: Target, exported: ExportedModel, threads: int,
            validated: ValidatedRun | None = None) -> dict:
    """Embed the metadata, write the model card, hash every file, write manifest.json (checked against its
    schema), then verify the directory as a user would.

    Each file is hashed once here, after its last write (the card from the bytes written), and once more by the
    verification, which compares the files on disk with the manifest. ``validated`` (the validate stage's
    parity run) spares the verification a second run of the model when the packaged file computes what the
    validated one did (``verify.ValidatedRun``); a model file changed since then in anything but efexport's
    metadata is run again."""
    from efexport.exporter.verify import verify_artifact

    target.embed_metadata(exported.path, metadata_entries(manifest))
    files = file_table(staging)  # every file but the card (not written yet) and the manifest
    card = model_card(manifest | {"files": files}).encode()  # lists every file but itself
    (staging / CARD_FILE).write_bytes(card)
    files[CARD_FILE] = {"sha256": hashlib.sha256(card).hexdigest(), "bytes": len(card)}
    manifest = manifest | {"files": dict(sorted(files.items(), key=lambda item: PurePosixPath(item[0])))}
    check_manifest(manifest, "the manifest written by this export")
    write_manifest(staging, manifest)
    check = verify_artifact(staging, threads, validated=validated)
    if not check.passed:
        raise VerifyError("the packaged artifact failed its own verification: " + "; ".join(check.problems))
    return manifest
