from __future__ import annotations

import copy

import torch
from torch import nn

from efexport.exporter.models.efficientformer import MetaBlock4d
from efexport.exporter.passes import ALL_PASSES, CarryMixerScale
from efexport.exporter.passes.carry_mixer_scale import SCALE_BOUND
from efexport.exporter.stages.fold import traced_op_counts
from tests.helpers import error_vs_exact, realistic_model

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(14))
PREREQUISITES = ["fuse-conv-bn", "fold-layer-scale", "blend-pool-mixer"]


def _prepared(variant: str = "l1", dtype: torch.dtype = torch.float32) -> nn.Module:
    model = copy.deepcopy(realistic_model(variant)).to(dtype)
    for name in PREREQUISITES:
        ALL_PASSES[name]()(model)
    return model


def _mb4d_outputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out))
             for b in model.modules() if isinstance(b, MetaBlock4d)]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return outputs


def test_most_blends_lose_a_mul_and_outputs_hold() -> None:
    model = realistic_model("l1")
    folded = _prepared()
    before = traced_op_counts(folded, IMAGES[:1])
    result = CarryMixerScale()(folded)
    # l1 has 14 MB4D blocks; the one before the 4D->3D switch must hand over true values
    assert result.changed and 10 <= result.rewrites <= 13
    assert traced_op_counts(folded, IMAGES[:1])["mul"] == before["mul"] - result.rewrites
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5


def test_exact_in_float64() -> None:
    folded = _prepared(dtype=torch.float64)
    x = IMAGES.double()
    with torch.no_grad():
        expected = folded(x)
        CarryMixerScale()(folded)
        assert torch.allclose(folded(x), expected, atol=1e-10)


def test_stored_stream_stays_within_the_fp16_headroom_bound() -> None:
    plain = _prepared(dtype=torch.float64)
    carried = copy.deepcopy(plain)
    CarryMixerScale()(carried)
    x = IMAGES.double()
    ratios = [stored / true for stored, true in zip(_mb4d_outputs(carried, x), _mb4d_outputs(plain, x), strict=True)]
    # the ratio is one per channel: the same wherever the true value is not ~0
    spread = [r.flatten(2).median(dim=-1).values for r in ratios]
    assert max(float(s.max()) for s in spread) <= SCALE_BOUND * (1 + 1e-9)
    assert min(float(s.min()) for s in spread) >= 1 / SCALE_BOUND * (1 - 1e-9)
    assert any(float((s - 1).abs().max()) > 0.5 for s in spread)  # it did carry something
    assert torch.allclose(ratios[-1], torch.ones_like(ratios[-1]))  # true values before the 4D->3D switch


def test_a_blend_that_would_leave_the_bound_keeps_both_muls_and_stays_exact() -> None:
    folded = _prepared(dtype=torch.float64)
    blend = folded.stages[2].blocks[1].token_mixer
    blend.keep[0], blend.mix[0] = 1e-3, 1e-3  # whichever factor is divided out, channel 0 leaves [1/16, 16]
    x = IMAGES.double()
    with torch.no_grad():
        expected = folded(x)
        CarryMixerScale()(folded)
        assert torch.allclose(folded(x), expected, atol=1e-10)
    assert blend is not folded.stages[2].blocks[1].token_mixer
    rewritten = folded.stages[2].blocks[1].token_mixer
    assert rewritten.keep is not None and rewritten.mix is not None


def test_without_fused_mlps_nothing_changes() -> None:
    model = copy.deepcopy(realistic_model("l1"))
    ALL_PASSES["blend-pool-mixer"]()(model)
    assert not CarryMixerScale()(model).changed


def test_second_run_changes_nothing() -> None:
    folded = _prepared()
    CarryMixerScale()(folded)
    state = {k: v.clone() for k, v in folded.state_dict().items()}
    assert not CarryMixerScale()(folded).changed
    assert all(torch.equal(state[k], v) for k, v in folded.state_dict().items())
