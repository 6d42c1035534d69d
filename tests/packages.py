"""Real packages for the manifest-schema and model-card tests: each target exported once per test session.

The pipeline runs for real (variant l1, random-init weights, the shipped recipe with the shortest latency run it
allows); the result is shared by every test module that asks for the same target, so the schema and the card
are checked against manifests the code writes today, never against stored samples.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from efexport.exporter.manifest import MANIFEST_FILE
from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe

TARGETS = ("onnx", "coreml", "tensorrt", "coreai")
FAST_LATENCY = {"latency.warmup_runs": 1, "latency.window_runs": 5, "latency.max_windows": 3}  # 15 timed calls
# Core AI's Linux runtime runs an FP16 asset about 5x slower than an FP32 one (7 s against 1.5 s per l1 image):
# the shared package is FP32; tests/test_coreai_target.py checks the shipped FP16 one.
TARGET_OVERRIDES = {"coreai": {"precision": "fp32"}}

_EXPORTED: dict[str, tuple[Path, dict]] = {}


def exported_package(target: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(package directory, manifest as read back from its manifest.json) of an l1 export to ``target``.

    TensorRT writes its portable half without an engine where TensorRT or a GPU is missing, and builds one where
    both exist; either way the export returns a package."""
    if target not in _EXPORTED:
        recipe, _ = load_recipe(default_recipe_path(target))
        recipe = apply_overrides(recipe, FAST_LATENCY | TARGET_OVERRIDES.get(target, {}))
        request = ExportRequest(variant="l1", weights=None, seed=0, out_dir=tmp_path_factory.mktemp(f"pkg-{target}"),
                                recipe=recipe, recipe_source=str(default_recipe_path(target)))
        artifact = run_export(request, StageReporter(None)).artifact
        _EXPORTED[target] = artifact, json.loads((artifact / MANIFEST_FILE).read_text())
    path, manifest = _EXPORTED[target]
    return path, copy.deepcopy(manifest)  # tests edit their copy freely


_AGAIN: dict[str, Path] = {}


def exported_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second l1 ONNX export from exactly the inputs of ``exported_package("onnx")``: the same model bytes, a
    different measured latency, hence a different manifest and bundle under the same package name."""
    if "onnx" not in _AGAIN:
        recipe, _ = load_recipe(default_recipe_path("onnx"))
        request = ExportRequest(variant="l1", weights=None, seed=0, out_dir=tmp_path_factory.mktemp("pkg-again"),
                                recipe=apply_overrides(recipe, FAST_LATENCY),
                                recipe_source=str(default_recipe_path("onnx")))
        _AGAIN["onnx"] = run_export(request, StageReporter(None)).artifact
    return _AGAIN["onnx"]
