"""Shared test helpers: realistic models, checkpoints in each layout, and running the CLI for real."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from efexport.exporter.models.efficientformer import EfficientFormer, attention_bias_indices, build_model
from efexport.exporter.models.layouts import upstream_key_to_native
from efexport.exporter.models.random_weights import randomize_realistically

REPO = Path(__file__).resolve().parent.parent
STATE_DICTS = REPO / "tests" / "data" / "state-dicts"  # key/shape tables of real checkpoints


@functools.cache
def _realistic_state(variant: str, seed: int) -> dict[str, torch.Tensor]:
    return randomize_realistically(build_model(variant), seed).state_dict()


def realistic_model(variant: str, seed: int = 0) -> EfficientFormer:
    """A fresh eval-mode model with trained-like random weights (cached per variant and seed)."""
    model = build_model(variant)
    model.load_state_dict(_realistic_state(variant, seed))
    return model.eval()


def reference_layout(variant: str, layout: str) -> dict[str, list[int]]:
    """Key -> shape of a real upstream or timm checkpoint (tests/data/state-dicts)."""
    name = f"v1-{variant}.json" if layout == "upstream" else f"v1-{variant}-timm.json"
    return {k: shape for k, (shape, _dtype) in json.loads((STATE_DICTS / name).read_text())["keys"].items()}


def _with_bias_indices(state: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    idxs = attention_bias_indices(7)
    return {k: (idxs.clone() if k.endswith("attention_bias_idxs") else state[k]) for k in keys}


def timm_state_dict(model: EfficientFormer) -> dict[str, torch.Tensor]:
    """The model's weights exactly as a timm checkpoint holds them (attention_bias_idxs included)."""
    state = model.state_dict()
    keys = list(reference_layout(model.cfg.variant, "timm"))
    return _with_bias_indices(state, keys)


def upstream_state_dict(model: EfficientFormer) -> dict[str, torch.Tensor]:
    """The model's weights exactly as an upstream (snap-research) checkpoint holds them."""
    state = model.state_dict()
    upstream_keys = list(reference_layout(model.cfg.variant, "upstream"))
    renamed = {k: upstream_key_to_native(k) for k in upstream_keys}
    idxs = attention_bias_indices(7)
    return {k: (idxs.clone() if k.endswith("attention_bias_idxs") else state[renamed[k]]) for k in upstream_keys}


def edited_recipe(target: str, folder: Path, *edits: tuple[str, str]) -> Path:
    """``folder/recipe.toml``: the target's shipped recipe with each (old, new) edit applied once; an edit whose old
    text the recipe no longer holds fails the test, naming it."""
    from efexport.exporter.recipes import default_recipe_path

    text = default_recipe_path(target).read_text()
    for old, new in edits:
        assert old in text, f"{old!r} is not in the shipped {target} recipe any more"
        text = text.replace(old, new, 1)
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``efexport`` as a user would: a real subprocess of the installed console entry point."""
    exe = Path(sys.executable).with_name("efexport")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "efexport.exporter"]
    env = os.environ | {"COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO,
                          timeout=timeout, env=env)


@torch.no_grad()
def error_vs_exact(folded: torch.nn.Module, unfolded: torch.nn.Module, images: torch.Tensor) -> float:
    """Max abs error of ``folded`` (float32) against ``unfolded`` evaluated exactly (float64): the fold gate's rule."""
    exact = copy.deepcopy(unfolded).eval().double()(images.double())
    return float((folded.eval()(images).double() - exact).abs().max())


def with_passes(model: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """A deep copy of ``model`` with the named fold passes applied in order."""
    from efexport.exporter.passes import ALL_PASSES

    folded = copy.deepcopy(model)
    for name in names:
        ALL_PASSES[name]()(folded)
    return folded
