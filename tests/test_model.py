"""The model: identical to upstream, published sizes, head averaging, and no stale attention bias."""

from __future__ import annotations

import pytest
import torch

from efexport.exporter.models.efficientformer import (
    CONFIGS,
    VARIANTS,
    attention_bias_indices,
    build_model,
    final_token_grid,
)
from efexport.validate.reference import make_reference_inputs
from tests.helpers import realistic_model, reference_layout, timm_state_dict, upstream_state_dict
from tests.upstream_reference import UpstreamEfficientFormer

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_upstream_to_float32_rounding(variant: str) -> None:
    ours = realistic_model(variant)
    upstream = UpstreamEfficientFormer(variant)
    upstream.load_state_dict(upstream_state_dict(ours))
    with torch.no_grad():
        diff = (ours(IMAGES) - upstream.eval()(IMAGES)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_published(variant: str) -> None:
    with torch.device("meta"):
        model = build_model(variant)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 2) == CONFIGS[variant].published_params_m


@pytest.mark.parametrize("variant", VARIANTS)
def test_native_layout_is_timm_layout(variant: str) -> None:
    with torch.device("meta"):
        model = build_model(variant)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    timm = {k: v for k, v in reference_layout(variant, "timm").items() if not k.endswith("attention_bias_idxs")}
    assert ours == timm


def test_eval_output_is_mean_of_both_heads() -> None:
    model = realistic_model("l1")
    with torch.no_grad():
        eval_out = model(IMAGES)
        pooled = model.forward_features(IMAGES).mean(dim=1)
        expected = (model.head(pooled) + model.head_dist(pooled)) / 2
        head, head_dist = model.head(pooled), model.head_dist(pooled)
    assert torch.allclose(eval_out, expected, atol=1e-6)
    assert not torch.allclose(head, head_dist, atol=1e-2)  # the heads really differ


def test_train_mode_returns_both_heads() -> None:
    model = realistic_model("l1").train()
    out = model(IMAGES)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, 1000)


def _reference_logits(dtype: torch.dtype) -> torch.Tensor:
    model = realistic_model("l1").to(dtype)
    with torch.no_grad():
        return model(IMAGES.to(dtype))


ORDERS = {
    "load-eval-dtype": ("load", "eval", "dtype"),
    "eval-load-dtype": ("eval", "load", "dtype"),
    "eval-dtype-load": ("eval", "dtype", "load"),
    "dtype-eval-load": ("dtype", "eval", "load"),
    "dtype-load-eval": ("dtype", "load", "eval"),
    "load-dtype-eval": ("load", "dtype", "eval"),
}


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
def test_no_stale_attention_bias_in_any_call_order(order: tuple[str, ...]) -> None:
    """Upstream caches the gathered bias at eval(); loading weights or casting after that goes stale."""
    dtype = torch.float64
    weights = realistic_model("l1").state_dict()
    model = build_model("l1")
    for step in order:
        if step == "load":
            model.load_state_dict(weights)
        elif step == "eval":
            model.eval()
        else:
            model.to(dtype)
    with torch.no_grad():
        out = model(IMAGES.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out, _reference_logits(dtype), atol=1e-9)


@pytest.mark.parametrize("order", [("eval", "device"), ("device", "eval")])
def test_moving_device_moves_every_attention_tensor(order: tuple[str, ...]) -> None:
    """After .to(device) nothing may stay behind on the old device (meta stands in for a GPU here)."""
    model = realistic_model("l1")
    for step in order:
        model = model.eval() if step == "eval" else model.to("meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == "meta" for t in tensors)
    with torch.no_grad():
        out = model(IMAGES.to("meta"))
    assert out.device.type == "meta" and out.shape == (2, 1000)


def test_bfloat16_forward_after_eval_runs() -> None:
    model = realistic_model("l1").eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(IMAGES.to(torch.bfloat16)).float()
    assert torch.nn.functional.cosine_similarity(out, _reference_logits(torch.float32)).min() > 0.98


def test_attention_bias_indices_match_checkpoints() -> None:
    idxs = attention_bias_indices(7)
    assert idxs.shape == (49, 49) and int(idxs.max()) == 48
    assert idxs[0, 0] == 0 and torch.equal(idxs, idxs.T)
    upstream_idxs = upstream_state_dict(realistic_model("l1"))["network.6.4.token_mixer.attention_bias_idxs"]
    timm_idxs = timm_state_dict(realistic_model("l1"))["stages.3.blocks.4.token_mixer.attention_bias_idxs"]
    assert torch.equal(upstream_idxs, idxs) and torch.equal(timm_idxs, idxs)


@pytest.mark.parametrize("size", [192, 256, 160])
def test_other_input_sizes_are_refused(size: int) -> None:
    model = realistic_model("l1")
    with pytest.raises(ValueError, match="7x7"), torch.no_grad():
        model(torch.randn(1, 3, size, size))


def test_token_grid_is_seven_only_between_193_and_224() -> None:
    sevens = [s for s in range(100, 300) if final_token_grid(s) == 7]
    assert sevens == list(range(193, 225))


def test_realistic_weights_are_not_near_identity() -> None:
    model = realistic_model("l3")
    gammas = torch.cat([m.gamma for n, m in model.named_modules() if n.endswith(("ls1", "ls2"))])
    assert gammas.min() > 0.1
    inputs, _ = make_reference_inputs(5, 4, 4)
    with torch.no_grad():
        out = model(torch.from_numpy(inputs))
    assert len(set(out.argmax(1).tolist())) >= 4  # inputs are told apart, so top-1 agreement means something
