from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from efexport.exporter.recipes import Recipe, apply_overrides, default_recipe_path, load_recipe
from tests.packages import FAST_LATENCY, TARGETS, exported_package


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist (one worker per core), PyTorch gets one thread per worker, and so do the CLI subprocesses a
    test starts: two workers each spinning two OpenMP threads on two cores slow each other down several times.
    Runtimes whose thread count a test checks (ONNX Runtime's, from the recipe) are left as they are."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def fast_recipe() -> Recipe:
    """The shipped ONNX recipe with the smallest latency run it allows, so tests spend their time on parity."""
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    return apply_overrides(recipe, FAST_LATENCY)


# Real l1 packages of each target (tests.packages: exported once per worker), for the schema and model-card tests.
@pytest.fixture(scope="module", params=TARGETS)
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict]:
    """(target, package directory, manifest) for each target in turn."""
    path, manifest = exported_package(request.param, tmp_path_factory)
    return request.param, path, manifest


@pytest.fixture
def onnx(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh copy of the real ONNX manifest, to edit or break."""
    return exported_package("onnx", tmp_path_factory)[1]


@pytest.fixture
def coreml(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return exported_package("coreml", tmp_path_factory)[1]


@pytest.fixture
def tensorrt(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return exported_package("tensorrt", tmp_path_factory)[1]
