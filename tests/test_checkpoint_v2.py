"""EfficientFormerV2 checkpoints: every variant, both layouts, both file formats, through the load stage.

What a user's file goes through (``efexport.exporter.stages.load.load_model``): the family and the variant come
from the keys alone (no ``--variant``), the upstream (C, 1, 1) layer scales arrive as the native (C,), and the
model built from the file computes exactly what the model that wrote it computes. Upstream training
checkpoints (``module.`` prefixes, optimizer state, an argparse Namespace under ``args``) load without
executing anything. The refusals (the wrong family's variant, a truncated file, a missing or extra key) are in
the command-line catalogue, tests/test_bad_inputs.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efexport.exporter.models.checkpoint import read_checkpoint
from efexport.exporter.models.efficientformer_v2 import VARIANTS
from efexport.exporter.stages.load import load_model
from tests.helpers_v2 import realistic_model_v2, upstream_state_dict_v2

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def _save(state: dict[str, torch.Tensor], path: Path, training: bool) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif training:  # as upstream's training script saves it: DDP prefixes, optimizer state, its argparse args
        torch.save({"model": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "epoch": 299,
                    "args": argparse.Namespace(model="efficientformerv2_s0", lr=1e-3)}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("layout", "suffix"), [("upstream", ".pth"), ("upstream", ".safetensors"),
                                                ("timm", ".pth"), ("timm", ".safetensors")])
def test_a_checkpoint_names_its_family_and_variant_and_loads_exactly(variant: str, layout: str, suffix: str,
                                                                     tmp_path: Path) -> None:
    source = realistic_model_v2(variant)
    state = upstream_state_dict_v2(source) if layout == "upstream" else source.state_dict()
    path = _save(state, tmp_path / f"weights{suffix}", training=layout == "upstream")

    loaded = load_model(path, None, seed=0)  # no --variant: the keys say it

    assert (loaded.family.name, loaded.variant) == ("efficientformerv2", variant)
    assert loaded.package_name == f"efficientformerv2-{variant}"
    assert loaded.weights["layout"] == layout and loaded.weights["format"] == suffix.removeprefix(".")
    with torch.no_grad():
        assert torch.equal(loaded.model(IMAGES), source(IMAGES))


def test_the_names_users_type_pick_the_same_model(tmp_path: Path) -> None:
    """timm's model name and the short one are the same variant; the package is named by the family."""
    path = _save(realistic_model_v2("s0").state_dict(), tmp_path / "s0.safetensors", training=False)
    for name in ("s0", "efficientformerv2_s0"):
        loaded = load_model(path, name, seed=0)
        assert (loaded.variant, loaded.package_name) == ("s0", "efficientformerv2-s0")


def test_upstream_stores_bias_indices_that_are_checked_not_loaded(tmp_path: Path) -> None:
    """Upstream checkpoints carry ``attention_bias_idxs``; they must agree with the indices the model derives
    (a checkpoint from another resolution would otherwise load and compute garbage)."""
    state = upstream_state_dict_v2(realistic_model_v2("s0"))
    key = next(k for k in state if k.endswith("attention_bias_idxs"))
    state[key] = state[key].flip(-1).clone()
    path = _save(state, tmp_path / "bad-idxs.pth", training=False)
    assert read_checkpoint(path).family.name == "efficientformerv2"
    with pytest.raises(Exception, match="attention_bias_idxs differs from the attention bias layout"):
        load_model(path, None, seed=0)
