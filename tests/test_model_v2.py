"""EfficientFormerV2: identical to upstream (whole and part by part), published sizes, timm's layout, upstream
checkpoints mapped onto it, head averaging, no stale attention bias, realistic random weights, and layout
detection that never confuses V1 and V2."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from efexport.exporter.models import layouts as layouts_v1
from efexport.exporter.models.efficientformer_v2 import (
    CONFIGS,
    VARIANTS,
    Attention4D,
    Attention4DDownsample,
    LayerScale,
    build_model,
    grid_before_last_stage,
    relative_position_indices,
)
from efexport.exporter.models.efficientformer_v2_family import FAMILY
from efexport.exporter.models.family import FamilyEntry
from efexport.exporter.models.layouts_v2 import (
    TIMM,
    UPSTREAM,
    detect_layout,
    to_native,
    upstream_key_to_native,
    upstream_to_native,
)
from efexport.exporter.models.random_weights_v2 import randomize_realistically
from efexport.exporter.synthetic import normalised_images
from efexport.validate.reference import make_reference_inputs
from tests.helpers import STATE_DICTS
from tests.helpers_v2 import (
    realistic_model_v2,
    reference_layout_v2,
    upstream_reference_v2,
    upstream_state_dict_v2,
)
from tests.upstream_reference_v2 import UpstreamEfficientFormerV2, first_seen_offsets

IDXS = "attention_bias_idxs"
_GEN = torch.Generator().manual_seed(123)
# Picture-like and noise inputs, as the parity inputs are.
IMAGES = torch.cat([normalised_images(_GEN, 2), torch.randn(2, 3, 224, 224, generator=_GEN)])
TOLERANCE = 1e-5  # float32


def _meta_model(variant: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(variant)


# ------------------------------------------------------------------------------------- sizes and layouts


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_published_with_the_distillation_head(variant: str) -> None:
    """The paper counts both heads: with head_dist the count rounds to the published figure, without it not."""
    model = _meta_model(variant)
    count = sum(p.numel() for p in model.parameters())
    without_dist = count - sum(p.numel() for p in model.head_dist.parameters())
    assert round(count / 1e6, 2) == CONFIGS[variant].published_params_m
    assert round(without_dist / 1e6, 2) != CONFIGS[variant].published_params_m


@pytest.mark.parametrize("variant", VARIANTS)
def test_native_layout_is_timm_layout(variant: str) -> None:
    ours = {k: list(v.shape) for k, v in _meta_model(variant).state_dict().items()}
    timm = {k: v for k, v in reference_layout_v2(variant, TIMM).items() if not k.endswith(IDXS)}
    assert list(ours.items()) == list(timm.items())  # same keys, shapes and order


@pytest.mark.parametrize("variant", VARIANTS)
def test_upstream_layout_maps_exactly_onto_timm_layout(variant: str) -> None:
    upstream = {k: torch.empty(shape, device="meta") for k, shape in reference_layout_v2(variant, UPSTREAM).items()}
    native = upstream_to_native(upstream)
    params = {k: list(v.shape) for k, v in native.items() if not k.endswith(IDXS)}
    timm = reference_layout_v2(variant, TIMM)
    assert params == {k: v for k, v in timm.items() if not k.endswith(IDXS)}
    # upstream's stored bias indices land where the model derives its own
    own_idxs = {k for k, _ in _meta_model(variant).named_buffers() if k.endswith(IDXS)}
    assert {k for k in native if k.endswith(IDXS)} == own_idxs


@pytest.mark.parametrize("variant", VARIANTS)
def test_upstream_restatement_has_upstream_checkpoint_layout(variant: str) -> None:
    """The re-statement the parity tests trust is built like upstream: every key, shape and position."""
    with torch.device("meta"):
        reference = UpstreamEfficientFormerV2(variant)
    ours = {k: list(v.shape) for k, v in reference.state_dict().items()}
    assert list(ours.items()) == list(reference_layout_v2(variant, UPSTREAM).items())


def test_upstream_key_mapping_examples() -> None:
    cases = {
        "patch_embed.0.weight": "stem.conv1.conv.weight",
        "patch_embed.4.running_var": "stem.conv2.bn.running_var",
        "network.0.1.mlp.norm1.bias": "stages.0.blocks.1.mlp.fc1.bn.bias",
        "network.2.0.mlp.mid_norm.weight": "stages.1.blocks.0.mlp.mid.bn.weight",
        "network.4.4.layer_scale_1": "stages.2.blocks.4.ls1.gamma",
        "network.4.4.token_mixer.stride_conv.1.running_mean":
            "stages.2.blocks.4.token_mixer.stride_conv.bn.running_mean",
        "network.6.2.token_mixer.proj.1.weight": "stages.3.blocks.2.token_mixer.proj.conv.weight",
        "network.6.2.token_mixer.talking_head2.bias": "stages.3.blocks.2.token_mixer.talking_head2.bias",
        "network.1.proj.weight": "stages.1.downsample.conv.conv.weight",
        "network.3.norm.bias": "stages.2.downsample.conv.bn.bias",
        "network.5.bn.weight": "stages.3.downsample.conv.bn.weight",
        "network.5.attn.q.local.0.weight": "stages.3.downsample.attn.q.local.weight",
        "network.5.attn.q.proj.1.weight": "stages.3.downsample.attn.q.proj.bn.weight",
        "network.5.attn.proj.2.bias": "stages.3.downsample.attn.proj.bn.bias",
        "network.5.attn.attention_bias_idxs": "stages.3.downsample.attn.attention_bias_idxs",
        "dist_head.weight": "head_dist.weight",
        "norm.running_mean": "norm.running_mean",
    }
    assert {k: upstream_key_to_native(k) for k in cases} == cases


def test_layer_scales_are_reshaped_and_collisions_refused() -> None:
    gamma = torch.arange(4.0).view(4, 1, 1)
    native = to_native({"network.0.0.layer_scale_2": gamma}, UPSTREAM)
    assert native["stages.0.blocks.0.ls2.gamma"].shape == (4,)
    assert torch.equal(native["stages.0.blocks.0.ls2.gamma"], torch.arange(4.0))
    timm = to_native({"stages.0.blocks.0.ls2.gamma": torch.ones(4)}, TIMM)
    assert timm["stages.0.blocks.0.ls2.gamma"].shape == (4,)
    with pytest.raises(ValueError, match="both mean"):
        to_native({"dist_head.bias": torch.zeros(2), "head_dist.bias": torch.zeros(2)}, UPSTREAM)


def test_upstream_checkpoint_loads_into_the_native_model() -> None:
    """An upstream state dict, converted, loads strictly and gives the same logits; its bias indices agree."""
    source = realistic_model_v2("s0")
    native = to_native(upstream_state_dict_v2(source), UPSTREAM)
    derived = {k: v for k, v in native.items() if k.endswith(IDXS)}
    model = build_model("s0")
    model.load_state_dict({k: v for k, v in native.items() if k not in derived}, strict=True)
    buffers = dict(model.named_buffers())
    assert derived and all(torch.equal(v, buffers[k]) for k, v in derived.items())
    with torch.no_grad():
        assert torch.equal(model.eval()(IMAGES), source(IMAGES))


# ----------------------------------------------------------------------------------------- layout detection


def _table(name: str) -> list[str]:
    return list(json.loads((STATE_DICTS / name).read_text())["keys"])


V1_TABLES = [f"v1-{v}{suffix}.json" for v in ("l1", "l3", "l7") for suffix in ("", "-timm")]
V2_TABLES = [f"v2-{v}{suffix}.json" for v in VARIANTS for suffix in ("", "-timm")]


@pytest.mark.parametrize("name", V2_TABLES)
def test_v2_detector_names_v2_layouts(name: str) -> None:
    assert detect_layout(_table(name)) == (TIMM if name.endswith("-timm.json") else UPSTREAM)


@pytest.mark.parametrize("name", V1_TABLES)
def test_v2_detector_never_claims_v1_tables(name: str) -> None:
    keys = _table(name)
    assert layouts_v1.detect_layout(keys) is not None  # V1's own detector does claim them
    assert detect_layout(keys) is None


@pytest.mark.parametrize("name", V2_TABLES)
def test_v1_side_never_claims_v2_tables(name: str) -> None:
    """V1's detect_layout alone goes by prefixes and would take V2 tables; what keeps V1 off them today is the
    V2 signature check that checkpoint.py applies first. Whatever integration replaces it must keep this."""
    keys = _table(name)
    v1_claims = layouts_v1.detect_layout(keys) if not layouts_v1.looks_like_efficientformer_v2(keys) else None
    assert v1_claims is None


# ------------------------------------------------------------------------------------------ upstream parity


@pytest.fixture(scope="module")
def s0_pair() -> tuple[nn.Module, nn.Module]:
    """(ours, upstream re-statement) with the same realistic s0 weights, both in eval mode."""
    ours = realistic_model_v2("s0")
    return ours, upstream_reference_v2(ours)


def test_whole_model_matches_upstream(s0_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, upstream = s0_pair
    with torch.no_grad():
        ours_out, upstream_out = ours(IMAGES), upstream(IMAGES)
    assert ours_out.shape == (4, 1000)
    assert (ours_out - upstream_out).abs().max().item() <= TOLERANCE
    assert ours_out.std() > 0.5  # the comparison is of outputs that carry signal


# (our module, upstream's module): the hard parts and the blocks they sit in
PARTS = {
    "stem": ("stem", "patch_embed"),
    "ffn": ("stages.1.blocks.0.mlp", "network.2.0.mlp"),
    "ffn-block": ("stages.1.blocks.0", "network.2.0"),
    "downsample": ("stages.2.downsample", "network.3"),
    "stride2-attention": ("stages.2.blocks.4.token_mixer", "network.4.4.token_mixer"),
    "stride2-attn-block": ("stages.2.blocks.4", "network.4.4"),
    "attention-downsample": ("stages.3.downsample.attn", "network.5.attn"),
    "attention-downsample-whole": ("stages.3.downsample", "network.5"),
    "attention4d": ("stages.3.blocks.2.token_mixer", "network.6.2.token_mixer"),
    "attn-ffn-block": ("stages.3.blocks.3", "network.6.3"),
}


@pytest.fixture(scope="module")
def part_inputs(s0_pair: tuple[nn.Module, nn.Module]) -> dict[str, torch.Tensor]:
    """What each part of ours receives on IMAGES: realistic activations, not noise of a guessed scale."""
    ours, _ = s0_pair
    captured: dict[str, torch.Tensor] = {}
    hooks = [ours.get_submodule(path).register_forward_pre_hook(
        lambda _m, args, path=path: captured.__setitem__(path, args[0].detach().clone()))
        for path, _ in PARTS.values()]
    with torch.no_grad():
        ours(IMAGES)
    for hook in hooks:
        hook.remove()
    return captured


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
def test_each_part_matches_upstream(part: tuple[str, str], s0_pair: tuple[nn.Module, nn.Module],
                                    part_inputs: dict[str, torch.Tensor]) -> None:
    ours, upstream = s0_pair
    ours_path, upstream_path = part
    x = part_inputs[ours_path]
    with torch.no_grad():
        ours_out = ours.get_submodule(ours_path)(x)
        upstream_out = upstream.get_submodule(upstream_path)(x)
    assert ours_out.shape == upstream_out.shape
    assert (ours_out - upstream_out).abs().max().item() <= TOLERANCE
    assert ours_out.abs().mean() > 0.05  # a part that outputs ~0 would match anything


def test_stride2_attention_runs_at_half_resolution_and_upsamples(s0_pair: tuple[nn.Module, nn.Module],
                                                                 part_inputs: dict[str, torch.Tensor]) -> None:
    ours, _ = s0_pair
    attn = ours.get_submodule("stages.2.blocks.4.token_mixer")
    assert isinstance(attn, Attention4D) and attn.grid == 7 and attn.bias().shape == (8, 49, 49)
    x = part_inputs["stages.2.blocks.4.token_mixer"]
    assert x.shape[-2:] == (14, 14)
    with torch.no_grad():
        assert attn(x).shape == x.shape


def test_attention_downsample_queries_seven_over_fourteen(s0_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, _ = s0_pair
    attn = ours.get_submodule("stages.3.downsample.attn")
    assert isinstance(attn, Attention4DDownsample)
    assert attn.bias().shape == (8, 49, 196)


@pytest.mark.parametrize(("key_grid", "stride"), [(7, 1), (14, 2)])
def test_bias_indices_equal_upstreams_first_seen_numbering(key_grid: int, stride: int) -> None:
    keys = [(y, x) for y in range(key_grid) for x in range(key_grid)]
    query_side = -(-key_grid // stride)
    queries = [(y, x) for y in range(query_side) for x in range(query_side)]
    count, expected = first_seen_offsets(queries, keys, stride)
    ours = relative_position_indices(key_grid, stride)
    assert count == key_grid**2
    assert torch.equal(ours, expected)


def test_attention_bias_matters(s0_pair: tuple[nn.Module, nn.Module]) -> None:
    """A stale (zero) bias changes the logits clearly: so the call-order tests below can fail."""
    ours, _ = s0_pair
    zeroed = realistic_model_v2("s0")
    with torch.no_grad():
        for module in zeroed.modules():
            if isinstance(module, Attention4D | Attention4DDownsample):
                module.attention_biases.zero_()
        assert (zeroed(IMAGES) - ours(IMAGES)).abs().max() > 0.1


# ------------------------------------------------------------------------------------------- heads and modes


def test_eval_output_is_mean_of_both_heads(s0_pair: tuple[nn.Module, nn.Module]) -> None:
    model, _ = s0_pair
    with torch.no_grad():
        eval_out = model(IMAGES)
        pooled = model.forward_features(IMAGES).mean(dim=(2, 3))
        head, head_dist = model.head(pooled), model.head_dist(pooled)
    assert torch.allclose(eval_out, (head + head_dist) / 2, atol=1e-6)
    assert not torch.allclose(head, head_dist, atol=1e-2)  # the heads really differ


def test_train_mode_returns_both_heads() -> None:
    model = realistic_model_v2("s0").train()
    out = model(IMAGES)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (4, 1000)
    assert not torch.allclose(out[0], out[1], atol=1e-2)


@pytest.mark.parametrize("size", [208, 240, 192])
def test_other_input_sizes_are_refused(size: int) -> None:
    model = realistic_model_v2("s0")
    with pytest.raises(ValueError, match="224x224"), torch.no_grad():
        model(torch.randn(1, 3, size, size))


def test_stage_two_grid_is_fourteen_only_between_209_and_224() -> None:
    fourteens = [s for s in range(100, 300) if grid_before_last_stage(s) == 14]
    assert fourteens == list(range(209, 225))


# ------------------------------------------------------------------------------ no stale attention bias


def _reference_logits(dtype: torch.dtype) -> torch.Tensor:
    """Logits of a freshly built upstream re-statement, loaded, in eval mode, cast to ``dtype``."""
    reference = upstream_reference_v2(realistic_model_v2("s0")).to(dtype)
    with torch.no_grad():
        return reference(IMAGES.to(dtype))


ORDERS = {
    "load-eval-dtype": ("load", "eval", "dtype"),
    "eval-load-dtype": ("eval", "load", "dtype"),
    "eval-dtype-load": ("eval", "dtype", "load"),
    "dtype-eval-load": ("dtype", "eval", "load"),
    "dtype-load-eval": ("dtype", "load", "eval"),
    "load-dtype-eval": ("load", "dtype", "eval"),
    "load-eval-cpu": ("load", "eval", "cpu"),
    "eval-load-cpu": ("eval", "load", "cpu"),
}


@pytest.fixture(scope="module")
def reference_logits() -> Callable[[torch.dtype], torch.Tensor]:
    cache: dict[torch.dtype, torch.Tensor] = {}
    return lambda dtype: cache[dtype] if dtype in cache else cache.setdefault(dtype, _reference_logits(dtype))


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
def test_no_stale_attention_bias_in_any_call_order(order: tuple[str, ...],
                                                   reference_logits: Callable[[torch.dtype], torch.Tensor]) -> None:
    """Upstream caches the gathered bias at eval(); loading weights, casting or moving after that goes stale."""
    dtype = torch.float64 if "dtype" in order else torch.float32
    weights = realistic_model_v2("s0").state_dict()
    model = build_model("s0")
    for step in order:
        if step == "load":
            model.load_state_dict(weights)
        elif step == "eval":
            model.eval()
        elif step == "dtype":
            model.to(dtype)
        else:
            model.to("cpu")  # the only device here; a GPU move is checked with meta below
    with torch.no_grad():
        out = model(IMAGES.to(dtype))
    assert out.dtype == dtype
    # a stale float32 copy would still give float64 logits (type promotion), and exactly so: float32 values
    # survive the cast; so the bias itself must follow the model
    attentions = [m for m in model.modules() if isinstance(m, Attention4D | Attention4DDownsample)]
    assert all(m.bias().dtype == dtype for m in attentions)
    atol = 1e-9 if dtype == torch.float64 else TOLERANCE
    assert (out - reference_logits(dtype)).abs().max().item() <= atol


def test_moving_device_after_eval_moves_every_attention_tensor() -> None:
    """After .to(device) nothing may stay behind on the old device (meta stands in for a GPU here)."""
    model = realistic_model_v2("s0").eval().to("meta")
    attentions = [m for m in model.modules() if isinstance(m, Attention4D | Attention4DDownsample)]
    assert len(attentions) == 5  # s0: 2 strided, 2 plain, 1 downsample
    assert all(m.bias().device.type == "meta" for m in attentions)
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    with torch.no_grad():
        out = model(IMAGES.to("meta"))
    assert out.device.type == "meta" and out.shape == (4, 1000)


# ------------------------------------------------------------------------------------ realistic random weights


def test_random_weights_are_deterministic_per_seed_and_differ_between_seeds() -> None:
    first = randomize_realistically(build_model("s0"), 7).state_dict()
    again = randomize_realistically(build_model("s0"), 7).state_dict()
    other = randomize_realistically(build_model("s0"), 8).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    floats = [k for k in first if first[k].is_floating_point()]
    assert all(not torch.equal(first[k], other[k]) for k in floats)


def test_random_weights_are_not_near_identity(s0_pair: tuple[nn.Module, nn.Module]) -> None:
    model, _ = s0_pair
    gammas = torch.cat([m.gamma for m in model.modules() if isinstance(m, LayerScale)])
    assert gammas.min() > 0.1 and gammas.max() <= 1.0
    biases = torch.cat([m.attention_biases.flatten() for m in model.modules()
                        if isinstance(m, Attention4D | Attention4DDownsample)])
    assert 0.5 < biases.std() < 2.0
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.allclose(bn.running_var, torch.ones_like(bn.running_var)) for bn in bns)
    assert all(not torch.allclose(bn.weight, torch.ones_like(bn.weight)) for bn in bns)


def test_random_weights_tell_inputs_apart(s0_pair: tuple[nn.Module, nn.Module]) -> None:
    model, _ = s0_pair
    inputs, _ = make_reference_inputs(5, 4, 4)
    with torch.no_grad():
        out = model(torch.from_numpy(inputs))
    assert len(set(out.argmax(1).tolist())) >= 4  # inputs are told apart, so top-1 agreement means something
    gaps = torch.cdist(out, out) + torch.eye(len(out)) * 1e9
    assert gaps.min() > 1.0  # every pair of inputs gets clearly different logits


# -------------------------------------------------------------------------------------------------- family


def test_family_declaration_is_consistent() -> None:
    """The registry line the family is meant for loads this FAMILY and agrees with it."""
    entry = FamilyEntry("efficientformerv2", "EfficientFormerV2", "EfficientFormerV2", "v2", ("s0", "s1", "s2", "l"),
                        {f"efficientformerv2_{v}": v for v in ("s0", "s1", "s2", "l")},
                        "efexport.exporter.models.efficientformer_v2_family")
    assert entry.load() is FAMILY
    assert (FAMILY.display_name, FAMILY.version) == ("EfficientFormerV2", "v2")
    published = FAMILY.published("s2")
    assert published["params_m"] == 12.71 and published["imagenet_top1_percent"] == 81.6
    assert published["gmacs"] == 1.25 and published["latency_ms"]["value"] == 1.6
    assert FAMILY.preprocessing("s0").input_size == 224
    assert FAMILY.package_name("l") == "efficientformerv2-l"
    assert set(FAMILY.layouts) == {UPSTREAM, TIMM} and FAMILY.detect_layout is detect_layout
    assert build_model("s1").cfg.variant == "s1" and build_model("l").cfg.num_classes == 1000
    with pytest.raises(ValueError, match="unknown EfficientFormerV2 variant"):
        build_model("l1")
