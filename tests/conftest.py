from __future__ import annotations

import pytest

from exporter.recipes import Recipe, apply_overrides, default_recipe_path, load_recipe


@pytest.fixture(scope="session")
def fast_recipe() -> Recipe:
    """The shipped ONNX recipe with the smallest latency run it allows, so tests spend their time on parity."""
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    return apply_overrides(recipe, {"latency.warmup_runs": 1, "latency.timed_runs": 20})
