"""Checkpoint import: layouts and formats in, the exact same network out; every bad file refused by name."""

from __future__ import annotations

import argparse
import builtins
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efexport.exporter.errors import CheckpointError, ExitCode
from efexport.exporter.models.checkpoint import (
    Checkpoint,
    expected_shapes,
    identify_variant,
    layout_mismatches,
    load_into_model,
    read_checkpoint,
)
from efexport.exporter.models.efficientformer import (
    VARIANTS,
    EfficientFormer,
    LayerScale,
    attention_bias_indices,
    build_model,
)
from efexport.exporter.models.efficientformer_family import FAMILY as V1
from efexport.exporter.models.layouts import detect_layout, looks_like_efficientformer_v2, upstream_key_to_native
from efexport.exporter.stages.load import RANDOM_INIT, load_model
from tests.helpers import STATE_DICTS, realistic_model, reference_layout, timm_state_dict, upstream_state_dict

IDXS = "attention_bias_idxs"


# ---------------------------------------------------------------------------------------------- fixtures


class Reference:
    """A realistic model per variant, an input and its output; built once per module."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[EfficientFormer, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, variant: str) -> tuple[EfficientFormer, torch.Tensor, torch.Tensor]:
        if variant not in self._cache:
            model = realistic_model(variant)
            x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1234))
            with torch.no_grad():
                y = model(x)
            self._cache[variant] = (model, x, y)
        return self._cache[variant]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="module")
def l1_files(tmp_path_factory: pytest.TempPathFactory, reference: Reference) -> Iterator[dict[str, Path]]:
    """One good l1 checkpoint of each format, shared by the tests that only need a file to spoil."""
    root = tmp_path_factory.mktemp("l1-files")
    model = reference("l1")[0]
    pth, st = root / "l1-upstream.pth", root / "l1-timm.safetensors"
    torch.save({"model": upstream_state_dict(model)}, pth)
    save_file({k: v.contiguous() for k, v in timm_state_dict(model).items()}, str(st))
    legacy = root / "l1-upstream-legacy.pth"  # torch < 1.6 serialization: a plain pickle stream, not a zip
    torch.save({"model": upstream_state_dict(model)}, legacy, _use_new_zipfile_serialization=False)
    yield {"pth": pth, "safetensors": st, "legacy": legacy}
    for path in (pth, st, legacy):
        path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _read_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return str(info.value)


def _load_error(state: dict[str, torch.Tensor], path: Path, variant: str | None) -> str:
    """Save ``state`` bare, read it (which must succeed) and return load_into_model's error message."""
    ckpt = read_checkpoint(_save(state, path))
    with pytest.raises(CheckpointError) as info:
        load_into_model(ckpt, variant)
    return str(info.value)


# ------------------------------------------------------------------------------------------ round trips


def _upstream_under(entry: str) -> Callable[[EfficientFormer], dict]:
    return lambda model: {entry: upstream_state_dict(model)}


def _module_prefixed(model: EfficientFormer) -> dict:
    # what a DistributedDataParallel-wrapped model saves, under 'model' as upstream's training script does
    return {"model": {f"module.{k}": v for k, v in upstream_state_dict(model).items()}}


# name -> (suffix, layout, file_format, object to save)
FORMATS: dict[str, tuple[str, str, str, Callable[[EfficientFormer], dict]]] = {
    "upstream-model": (".pth", "upstream", "pth", _upstream_under("model")),
    "upstream-state_dict": (".pth", "upstream", "pth", _upstream_under("state_dict")),
    "upstream-model_state_dict": (".pth", "upstream", "pth", _upstream_under("model_state_dict")),
    "upstream-legacy": (".pth", "upstream", "pth", _upstream_under("model")),
    "upstream-bare": (".pth", "upstream", "pth", upstream_state_dict),
    "upstream-module-prefix": (".pth", "upstream", "pth", _module_prefixed),
    "timm-pth": (".pth", "timm", "pth", timm_state_dict),
    "timm-safetensors": (".safetensors", "timm", "safetensors", timm_state_dict),
}
_FULL = ["upstream-model", "upstream-state_dict", "upstream-bare", "upstream-module-prefix", "timm-pth",
         "timm-safetensors"]
ROUND_TRIPS = (
    [pytest.param("l1", f, id=f"l1-{f}") for f in [*_FULL, "upstream-model_state_dict", "upstream-legacy"]]
    + [pytest.param("l3", f, id=f"l3-{f}") for f in _FULL]
    # l7 is 82M parameters (~330 MB a file): one case per layout
    + [pytest.param("l7", f, id=f"l7-{f}") for f in ("upstream-model", "timm-safetensors")]
)


def _write(fmt: str, model: EfficientFormer, path: Path) -> None:
    _suffix, _layout, file_format, make = FORMATS[fmt]
    obj = make(model)
    if file_format == "safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt != "upstream-legacy")


@pytest.mark.parametrize(("variant", "fmt"), ROUND_TRIPS)
def test_round_trip_identifies_variant_and_reproduces_outputs_exactly(
    variant: str, fmt: str, reference: Reference, tmp_path: Path
) -> None:
    model, x, y = reference(variant)
    suffix, layout, file_format, _ = FORMATS[fmt]
    path = tmp_path / f"{variant}-{fmt}{suffix}"
    _write(fmt, model, path)
    try:
        ckpt = read_checkpoint(path)
        assert ckpt.layout == layout
        assert ckpt.file_format == file_format
        assert ckpt.sha256 == _sha256(path)
        assert ckpt.path == path
        # native layout: the model's own keys, plus the derived attention_bias_idxs the file carried
        native = model.state_dict()
        assert {k for k in ckpt.state_dict if not k.endswith(IDXS)} == set(native)
        assert not any(k.startswith(("module.", "network.", "patch_embed.", "dist_head.")) for k in ckpt.state_dict)
        assert identify_variant(ckpt.state_dict, ckpt.family) == variant
        assert layout_mismatches(ckpt.state_dict, ckpt.family, variant) == []

        loaded, found = load_into_model(ckpt, None)
        assert found == variant
        assert loaded.cfg.variant == variant
        assert not loaded.training
        loaded_state = loaded.state_dict()
        for key, value in native.items():
            assert torch.equal(loaded_state[key], value), key
        with torch.no_grad():
            out = loaded(x)
        assert torch.equal(out, y), f"max abs diff {(out - y).abs().max().item()}"
        assert ckpt.describe() == {"source": "checkpoint", "file": path.name, "sha256": ckpt.sha256,
                                   "format": file_format, "layout": layout}
    finally:
        path.unlink(missing_ok=True)  # l3/l7 files are large; do not keep them in pytest's retained tmp dirs


def test_explicit_matching_variant_loads(l1_files: dict[str, Path], reference: Reference) -> None:
    _, x, y = reference("l1")
    model, variant = load_into_model(read_checkpoint(l1_files["safetensors"]), "l1")
    assert variant == "l1"
    with torch.no_grad():
        assert torch.equal(model(x), y)


def _mixed_layouts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # upstream keys plus a timm-named copy of one of them that differs
    return {**state, "stem.conv1.weight": torch.zeros_like(state["patch_embed.0.weight"])}


def _prefixed_and_bare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a DDP-saved dict with one bare key too: 'module.patch_embed.0.weight' and 'patch_embed.0.weight'
    return {**{f"module.{k}": v for k, v in state.items()},
            "patch_embed.0.weight": torch.zeros_like(state["patch_embed.0.weight"])}


@pytest.mark.parametrize("make", [_mixed_layouts, _prefixed_and_bare])
def test_keys_colliding_after_renaming_are_refused(make: Callable, reference: Reference, tmp_path: Path) -> None:
    state = make(upstream_state_dict(reference("l1")[0]))
    path = _save(state, tmp_path / "colliding.pth")
    with pytest.raises(CheckpointError, match=r"stem\.conv1\.weight|patch_embed\.0\.weight"):
        load_into_model(read_checkpoint(path), None)


def test_half_precision_checkpoint_loads_as_float32(reference: Reference, tmp_path: Path) -> None:
    model = reference("l1")[0]
    half = {k: v.half() if v.is_floating_point() else v for k, v in timm_state_dict(model).items()}
    path = tmp_path / "l1-fp16.safetensors"
    save_file({k: v.contiguous() for k, v in half.items()}, str(path))
    loaded, variant = load_into_model(read_checkpoint(path), None)
    assert variant == "l1"
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            assert torch.equal(value, half[key].float()), key


# ------------------------------------------------------------------------------ mapping, without weights


@pytest.mark.parametrize("variant", VARIANTS)
def test_upstream_keys_map_onto_timm_keys_with_the_same_shapes(variant: str) -> None:
    upstream = reference_layout(variant, "upstream")
    timm = reference_layout(variant, "timm")
    mapped = {upstream_key_to_native(k): shape for k, shape in upstream.items()}
    assert len(mapped) == len(upstream), "two upstream keys map to the same native key"
    assert set(mapped) == set(timm), (sorted(set(mapped) - set(timm))[:5], sorted(set(timm) - set(mapped))[:5])
    assert mapped == timm, [k for k in timm if mapped[k] != timm[k]][:5]
    assert detect_layout(list(upstream)) == "upstream"
    assert detect_layout(list(timm)) == "timm"
    assert not looks_like_efficientformer_v2(list(upstream))
    # the native model is timm's layout less the derived attention_bias_idxs
    native = {k: list(shape) for k, shape in expected_shapes(V1, variant).items()}
    assert native == {k: shape for k, shape in timm.items() if not k.endswith(IDXS)}


@pytest.mark.parametrize(("upstream", "native"), [
    ("patch_embed.0.weight", "stem.conv1.weight"),
    ("patch_embed.1.running_var", "stem.norm1.running_var"),
    ("patch_embed.3.weight", "stem.conv2.weight"),
    ("patch_embed.4.num_batches_tracked", "stem.norm2.num_batches_tracked"),
    ("network.0.2.layer_scale_2", "stages.0.blocks.2.ls2.gamma"),
    ("network.1.proj.weight", "stages.1.downsample.conv.weight"),
    ("network.3.norm.bias", "stages.2.downsample.norm.bias"),
    ("network.5.proj.bias", "stages.3.downsample.conv.bias"),
    ("network.6.4.layer_scale_1", "stages.3.blocks.4.ls1.gamma"),
    ("network.6.4.token_mixer.attention_biases", "stages.3.blocks.4.token_mixer.attention_biases"),
    ("network.4.11.mlp.norm1.weight", "stages.2.blocks.11.mlp.norm1.weight"),
    ("dist_head.bias", "head_dist.bias"),
    ("head.weight", "head.weight"),
    ("norm.weight", "norm.weight"),
])
def test_upstream_key_examples(upstream: str, native: str) -> None:
    assert upstream_key_to_native(upstream) == native


# ------------------------------------------------------------------------------------ training checkpoint


def test_upstream_training_checkpoint_loads_safely(reference: Reference, tmp_path: Path) -> None:
    model, x, y = reference("l1")
    path = _save({
        "model": upstream_state_dict(model),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "lr_scheduler": {"last_epoch": 299, "base_lrs": [1e-3]},
        "epoch": 299,
        "args": argparse.Namespace(model="efficientformer_l1", lr=1e-3),
    }, tmp_path / "checkpoint.pth")
    ckpt = read_checkpoint(path)
    assert ckpt.layout == "upstream"
    loaded, variant = load_into_model(ckpt, None)
    assert variant == "l1"
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_training_checkpoint_with_optimizer_tensors_loads(reference: Reference, tmp_path: Path) -> None:
    model = reference("l1")[0]
    path = _save({
        "model": upstream_state_dict(model),
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "epoch": 10,
    }, tmp_path / "checkpoint.pth")
    assert load_into_model(read_checkpoint(path), None)[1] == "l1"


# ------------------------------------------------------------------------------------------- malicious


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


class _TouchesPath:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize(("gadget", "named"), [
    (_RunsShell, f"{os.system.__module__}.system"),
    (_Evals, "builtins.eval"),
    (_TouchesPath, "getattr"),
])
@pytest.mark.parametrize("where", ["top-level", "inside-args-namespace"])
def test_malicious_pickle_is_refused_and_never_runs(
    gadget: type, named: str, where: str, reference: Reference, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = gadget(marker)
    ckpt: dict = {"model": upstream_state_dict(reference("l1")[0]), "epoch": 1}
    if where == "top-level":
        ckpt["extra"] = payload
    else:  # hidden inside the allowlisted argparse.Namespace
        ckpt["args"] = argparse.Namespace(model="efficientformer_l1", hook=payload)
    path = _save(ckpt, tmp_path / "evil.pth")
    assert not marker.exists()
    message = _read_error(path)
    assert named in message
    assert "refused" in message
    assert str(path) in message
    assert not marker.exists(), "unpickling ran the checkpoint's code"


def test_malicious_pickle_refused_by_load_model(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save({"model": {"head.weight": torch.zeros(2)}, "x": _RunsShell(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="system"):
        load_model(path, None, 0)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- bad files


def _missing(tmp: Path, files: dict[str, Path]) -> Path:
    return tmp / "does-not-exist.pth"


def _directory(tmp: Path, files: dict[str, Path]) -> Path:
    (tmp / "weights.pth").mkdir()
    return tmp / "weights.pth"


def _empty(suffix: str) -> Callable[[Path, dict[str, Path]], Path]:
    def make(tmp: Path, files: dict[str, Path]) -> Path:
        (tmp / f"empty{suffix}").write_bytes(b"")
        return tmp / f"empty{suffix}"
    return make


def _truncated(kind: str) -> Callable[[Path, dict[str, Path]], Path]:
    def make(tmp: Path, files: dict[str, Path]) -> Path:
        data = files[kind].read_bytes()
        path = tmp / f"truncated{files[kind].suffix}"
        path.write_bytes(data[: len(data) // 2])
        return path
    return make


def _random_bytes(suffix: str) -> Callable[[Path, dict[str, Path]], Path]:
    def make(tmp: Path, files: dict[str, Path]) -> Path:
        path = tmp / f"random{suffix}"
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(7),
                                       dtype=torch.uint8).numpy().tobytes())
        return path
    return make


def _json(tmp: Path, files: dict[str, Path]) -> Path:
    path = tmp / "config.json"
    path.write_text(json.dumps({"model": "efficientformer_l1", "weights": [1, 2, 3]}))
    return path


def _saved(obj_factory: Callable[[], object], name: str = "weights.pth") -> Callable[[Path, dict[str, Path]], Path]:
    return lambda tmp, files: _save(obj_factory(), tmp / name)


BAD_FILES = {
    "missing": (_missing, r"no such file"),
    "directory": (_directory, r"not a file"),
    "empty-pth": (_empty(".pth"), r"empty file"),
    "empty-safetensors": (_empty(".safetensors"), r"empty file"),
    "truncated-pth": (_truncated("pth"), r"not a readable PyTorch checkpoint \(truncated or corrupt"),
    "truncated-legacy-pth": (_truncated("legacy"), r"not a readable PyTorch checkpoint \(truncated or corrupt"),
    "truncated-safetensors": (_truncated("safetensors"), r"not a readable safetensors file \(truncated or corrupt"),
    "random-pth": (_random_bytes(".pth"), r"not a (readable )?PyTorch checkpoint"),
    "random-safetensors": (_random_bytes(".safetensors"), r"not a readable safetensors file"),
    "json": (_json, r"not a (readable )?PyTorch checkpoint"),
    "list": (_saved(lambda: [torch.zeros(3), torch.ones(3)]), r"no state dict found.*found list"),
    "no-tensors": (_saved(lambda: {"epoch": 3, "args": {"lr": 0.1}}), r"no state dict found.*'epoch', 'args'"),
    "empty-dict": (_saved(dict), r"no state dict found"),
    "model-entry-not-tensors": (_saved(lambda: {"model": {"a": 1}, "epoch": 2}), r"no state dict found.*'model'"),
    "not-efficientformer": (_saved(lambda: {"conv.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}),
                            r"not an EfficientFormer checkpoint.*conv\.weight"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_refused_with_a_message_naming_the_problem(
    case: str, l1_files: dict[str, Path], tmp_path: Path
) -> None:
    make, expected = BAD_FILES[case]
    path = make(tmp_path, l1_files)
    message = _read_error(path)
    assert re.search(expected, message, re.DOTALL), message
    assert str(path) in message


def test_unreadable_pickle_message_is_one_line_and_does_not_advise_unsafe_loading(tmp_path: Path) -> None:
    path = _random_bytes(".pth")(tmp_path, {})
    message = _read_error(path)
    assert "weights_only" not in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------ wrong contents


def test_l3_weights_for_l1_name_both_variants_and_a_shape(reference: Reference, tmp_path: Path) -> None:
    l3 = reference("l3")[0]
    message = _load_error(upstream_state_dict(l3), tmp_path / "l3.pth", "l1")
    assert "EfficientFormer-l1" in message
    assert "holds l3 weights" in message
    assert re.search(r"shape of \S+: checkpoint \(\d+(, \d+)*\), l1 expects \(\d+(, \d+)*\)", message), message
    # the l3 -> l1 difference in the stem: conv1 is 32 channels, not 24
    assert "stem.conv1.weight" in message and "(32, 3, 3, 3)" in message and "(24, 3, 3, 3)" in message


def test_l1_weights_for_l7_say_l1(reference: Reference, l1_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"EfficientFormer-l7 \(it holds l1 weights\)"):
        load_into_model(read_checkpoint(l1_files["safetensors"]), "l7")


def _timm_l1(reference: Reference) -> dict[str, torch.Tensor]:
    return timm_state_dict(reference("l1")[0])


MISSING_KEY = "stages.2.blocks.3.mlp.fc1.weight"
EXTRA_KEY = "stages.1.blocks.0.mlp.fc3.weight"


@pytest.mark.parametrize("variant", [None, "l1"])
def test_missing_key_is_named(variant: str | None, reference: Reference, tmp_path: Path) -> None:
    state = _timm_l1(reference)
    del state[MISSING_KEY]
    message = _load_error(state, tmp_path / "missing-key.pth", variant)
    assert f"missing key {MISSING_KEY} (896, 224, 1, 1)" in message
    if variant is None:
        assert "matches no EfficientFormer V1 variant" in message and "closest is l1" in message


def test_missing_key_in_upstream_file_is_named(reference: Reference, tmp_path: Path) -> None:
    state = upstream_state_dict(reference("l1")[0])
    del state["network.4.3.mlp.fc1.weight"]
    message = _load_error(state, tmp_path / "missing-key.pth", None)
    assert MISSING_KEY in message  # reported under its native name


@pytest.mark.parametrize("variant", [None, "l1"])
def test_extra_key_is_named(variant: str | None, reference: Reference, tmp_path: Path) -> None:
    state = _timm_l1(reference)
    state[EXTRA_KEY] = torch.zeros(96, 384, 1, 1)
    message = _load_error(state, tmp_path / "extra-key.pth", variant)
    assert f"unexpected key {EXTRA_KEY} (96, 384, 1, 1)" in message


@pytest.mark.parametrize(("key", "bad"), [("stages.3.blocks.4.token_mixer.qkv.weight", float("nan")),
                                          ("stem.norm1.running_var", float("inf"))])
def test_non_finite_values_are_refused(bad: float, key: str, reference: Reference, tmp_path: Path) -> None:
    state = _timm_l1(reference)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = bad
    message = _load_error(state, tmp_path / "nan.pth", None)
    assert "NaN" in message
    assert key in message


def test_v2_key_in_v1_dict_is_read_as_v2_and_refused_naming_the_mismatch(reference: Reference,
                                                                         tmp_path: Path) -> None:
    """A V1 state dict with one key only V2 has is not V1 any more: V2's detection claims it, and loading it
    fails naming the family and the first mismatched keys (not a silent V1 load that drops the key)."""
    state = upstream_state_dict(reference("l1")[0])
    state["network.0.0.mlp.mid.weight"] = torch.zeros(192, 1, 3, 3)
    ckpt = read_checkpoint(_save({"model": state}, tmp_path / "v2ish.pth"))
    assert ckpt.family.name == "efficientformerv2"
    with pytest.raises(CheckpointError) as info:
        load_into_model(ckpt, None)
    assert "EfficientFormerV2" in str(info.value) and "matches no EfficientFormerV2 variant" in str(info.value)
    assert "closest is s0" in str(info.value) and "shape of stem.conv1.bn" in str(info.value)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_real_v2_layout_is_read_as_efficientformer_v2(fmt: str, tmp_path: Path) -> None:
    keys = json.loads((STATE_DICTS / "v2-s0.json").read_text())["keys"]
    state = {k: torch.zeros(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in keys.items()}
    path = tmp_path / f"efficientformerv2_s0.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)
    ckpt = read_checkpoint(path)
    assert (ckpt.family.name, ckpt.layout) == ("efficientformerv2", "upstream")
    assert detect_layout(list(keys)) is None  # V1's detection does not claim it
    # upstream's (C, 1, 1) layer scales arrive as the native (C,)
    assert all(v.dim() == 1 for k, v in ckpt.state_dict.items() if k.endswith((".ls1.gamma", ".ls2.gamma")))


# ---------------------------------------------------------------------------------- attention_bias_idxs


def _wrong_idxs(kind: str) -> torch.Tensor:
    idxs = attention_bias_indices(7)
    if kind == "permuted":
        return idxs.flip(0).clone()
    if kind == "off-by-one":
        return (idxs + 1).clamp(max=int(idxs.max()))
    return attention_bias_indices(14)  # the layout of a 14x14 grid: another shape


@pytest.mark.parametrize(("kind", "layout"), [("permuted", "timm"), ("off-by-one", "timm"),
                                            ("other-resolution", "timm"), ("permuted", "upstream")])
def test_wrong_attention_bias_idxs_is_refused(kind: str, layout: str, reference: Reference, tmp_path: Path) -> None:
    model = reference("l1")[0]
    state = timm_state_dict(model) if layout == "timm" else upstream_state_dict(model)
    keys = [k for k in state if k.endswith(IDXS)]
    assert keys, "the reference layout carries attention_bias_idxs"
    state[keys[0]] = _wrong_idxs(kind)
    ckpt = read_checkpoint(_save(state, tmp_path / "idxs.pth"))
    with pytest.raises(CheckpointError, match=rf"stages\.3\.blocks\.4\.token_mixer\.{IDXS} differs"):
        load_into_model(ckpt, None)
    with pytest.raises(CheckpointError, match=IDXS):
        load_into_model(ckpt, "l1")


def test_checkpoint_without_attention_bias_idxs_loads(reference: Reference, tmp_path: Path) -> None:
    model, x, y = reference("l1")
    state = {k: v for k, v in timm_state_dict(model).items() if not k.endswith(IDXS)}
    loaded, variant = load_into_model(read_checkpoint(_save(state, tmp_path / "no-idxs.pth")), None)
    assert variant == "l1"
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_load_into_model_takes_a_checkpoint_built_in_memory(reference: Reference, tmp_path: Path) -> None:
    model, x, y = reference("l1")
    ckpt = Checkpoint(tmp_path / "in-memory.pth", "0" * 64, "pth", "timm", dict(model.state_dict()), V1)
    loaded, variant = load_into_model(ckpt, None)
    assert variant == "l1"
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


# --------------------------------------------------------------------------------------------- load stage


def _layer_scales(model: EfficientFormer) -> torch.Tensor:
    return torch.cat([m.gamma.detach().flatten() for m in model.modules() if isinstance(m, LayerScale)])


@pytest.fixture(scope="module")
def random_l1() -> dict[str, object]:
    return {"a": load_model(None, "l1", 0), "b": load_model(None, "l1", 0), "c": load_model(None, "l1", 1)}


def test_random_init_is_deterministic_per_seed(random_l1: dict) -> None:
    a, b = random_l1["a"].model.state_dict(), random_l1["b"].model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_random_init_differs_across_seeds(random_l1: dict) -> None:
    a, c = random_l1["a"].model.state_dict(), random_l1["c"].model.state_dict()
    differing = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], c[k])]
    assert len(differing) > 0.9 * sum(v.is_floating_point() for v in a.values())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(random_l1["a"].model(x), random_l1["c"].model(x))


def test_random_init_is_described_and_realistic(random_l1: dict) -> None:
    loaded = random_l1["a"]
    assert loaded.variant == "l1"
    assert loaded.weights == {"source": RANDOM_INIT, "seed": 0}
    assert loaded.weights["source"] == "random-init"
    assert loaded.is_random
    assert not loaded.model.training
    scales = _layer_scales(loaded.model)
    assert scales.numel() > 0
    assert (scales > 0.1).all(), f"layer scales as small as {scales.min().item()} (default init is 1e-5)"
    default = _layer_scales(build_model("l1"))
    assert torch.allclose(default, torch.full_like(default, 1e-5))  # the init the random weights must not keep


def test_load_model_without_weights_or_variant_is_refused() -> None:
    with pytest.raises(CheckpointError, match="--variant is required"):
        load_model(None, None, 0)


def test_load_model_unknown_variant_is_refused(l1_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="unknown variant 'l2'"):
        load_model(None, "l2", 0)
    with pytest.raises(CheckpointError, match="unknown variant 'l2'"):
        load_model(l1_files["pth"], "l2", 0)


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_load_model_with_weights_describes_them(kind: str, l1_files: dict[str, Path], reference: Reference) -> None:
    path = l1_files[kind]
    loaded = load_model(path, None, 5)
    assert loaded.variant == "l1"
    assert not loaded.is_random
    assert loaded.weights == {"source": "checkpoint", "file": path.name, "sha256": _sha256(path), "format": kind,
                              "layout": "upstream" if kind == "pth" else "timm"}
    _, x, y = reference("l1")
    with torch.no_grad():
        assert torch.equal(loaded.model(x), y)
