"""Reading checkpoints safely and loading them into the model of the registered family whose keys they hold.

Nothing pickled is ever executed: ``.pth`` files go through ``torch.load(weights_only=True)`` (with a
short allowlist of inert classes that upstream training checkpoints carry, such as the argparse
``Namespace`` under ``args``) and ``.safetensors`` through safetensors. Every failure is a
``CheckpointError`` that names the problem, raised before anything is written.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from efexport.exporter.errors import CheckpointError
from efexport.exporter.manifest import sha256_of
from efexport.exporter.models import FAMILIES
from efexport.exporter.models.family import ModelFamily

# Classes an upstream training checkpoint holds besides tensors. Unpickling them only builds plain
# objects (no code of the checkpoint's choosing runs), so they may be allowlisted for weights_only.
_INERT_GLOBALS: list = [argparse.Namespace]
STATE_DICT_ENTRIES = ("model", "state_dict", "model_state_dict")
_MAX_LISTED = 5


@dataclass(frozen=True)
class Checkpoint:
    """A state dict in the native layout, with where it came from."""

    path: Path
    sha256: str
    file_format: str  # "pth" or "safetensors"
    layout: str  # "upstream" or "timm"
    state_dict: dict[str, torch.Tensor]
    family: ModelFamily  # whose layout the keys are in


    def describe(self) -> dict:
        return {"source": "checkpoint", "file": self.path.name, "sha256": self.sha256,
                "format": self.file_format, "layout": self.layout}


def _unpickling_reason(exc: Exception) -> str:
    """The reason in torch's UnpicklingError, without its advice to retry with weights_only=False."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else "invalid pickle data"


def _torch_load(path: Path) -> object:
    try:
        with torch.serialization.safe_globals(_INERT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            found = []
        allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in _INERT_GLOBALS}
        unsafe = [name for name in found if name not in allowed]
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to load: the checkpoint's pickle references {', '.join(unsafe[:_MAX_LISTED])}, "
                "which loading would have to execute. efexport never unpickles code; re-save the weights "
                "alone (torch.save(ckpt['model'], ...)) or as .safetensors"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_unpickling_reason(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first_line}") \
            from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a bare state dict, or of the one under ``model``/``state_dict``; ``module.`` stripped."""
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict) and (entry := next((e for e in STATE_DICT_ENTRIES if _is_state_dict(obj.get(e))),
                                                  None)):
        state = obj[entry]
    else:
        shown = ", ".join(_shown(repr(k)) for k in list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: no state dict found: expected a dict of tensors, bare or under one of "
            f"{', '.join(STATE_DICT_ENTRIES)}; found {shown}"
        )
    return _renamed(state, lambda k: k.removeprefix("module."), path)


def _shown(key: str) -> str:
    """A key for a one-line message: as it is when short and printable, else quoted (line breaks escaped), shortened."""
    if key.isprintable() and len(key) <= 80:
        return key
    return repr(key if len(key) <= 80 else f"{key[:50]}...{key[-20:]}")


def _not_plain(value: torch.Tensor) -> str | None:
    """Why a tensor cannot be loaded as weights (sparse, quantized, meta, complex); None for a plain one."""
    if value.layout != torch.strided:
        return f"a {str(value.layout).removeprefix('torch.')} tensor"
    if value.is_quantized or value.is_complex():
        return f"a {str(value.dtype).removeprefix('torch.')} tensor"
    if value.is_meta:
        return "a meta tensor (no data)"
    return None


def _renamed(state: dict[str, torch.Tensor], rename: Callable[[str], str], path: Path) -> dict[str, torch.Tensor]:
    """Rename every key, refusing two keys that would land on one name (one would silently win)."""
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        try:
            new = rename(key)
        except ValueError as exc:  # a block index too long for int()
            raise CheckpointError(f"{path}: cannot read key {_shown(key)}: {str(exc).split(';')[0]}") from None
        if new in renamed:
            raise CheckpointError(f"{path}: keys {origin[new]!r} and {key!r} both mean {new!r}; "
                                  "the checkpoint mixes layouts or prefixes")
        renamed[new], origin[new] = value, key
    return renamed


def read_checkpoint(path: Path, families: Sequence[ModelFamily] | None = None) -> Checkpoint:
    """Read a file into the native-layout state dict of the family (of ``families``, default: every registered
    one) whose layout its keys are in, or raise CheckpointError saying why not."""
    path = Path(path)
    families = families if families is not None else [entry.load() for entry in FAMILIES]
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        try:
            raw = load_safetensors(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
        file_format = "safetensors"
    else:
        raw = _torch_load(path)
        file_format = "pth"
    state = extract_state_dict(raw, path)
    odd = [f"{_shown(k)} is {why}" for k, v in state.items() if (why := _not_plain(v))]
    if odd:
        raise CheckpointError(f"{path}: not plain dense weights: {'; '.join(odd[:_MAX_LISTED])}")
    keys = list(state)
    claims = [(family, layout) for family in families if (layout := family.detect_layout(keys)) is not None]
    if len(claims) > 1:  # each family's detection excludes the others' signature keys; a mix matches several
        raise CheckpointError(f"{path}: the keys fit more than one family ("
                              f"{', '.join(f'{f.title} {layout}' for f, layout in claims)});"
                              " the checkpoint mixes architectures")
    if claims:
        family, layout = claims[0]
        native = _renamed(state, family.layouts[layout], path)
        if family.native_value is not None:
            native = {key: family.native_value(key, value) for key, value in native.items()}
        return Checkpoint(path, sha256_of(path), file_format, layout, native, family)
    raise CheckpointError(
        f"{path}: not an EfficientFormer checkpoint: none of the upstream (patch_embed.*, network.*) or "
        f"timm (stem.*, stages.*) keys of any registered family ("
        f"{', '.join(f.title for f in families)}) are there; first keys: "
        f"{', '.join(map(_shown, keys[:_MAX_LISTED]))}"
    )


def expected_shapes(family: ModelFamily, variant: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = family.build(variant)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _split_derived(state: dict[str, torch.Tensor], family: ModelFamily) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
    derived = {k: v for k, v in state.items() if k.endswith(family.derived_keys)}
    return {k: v for k, v in state.items() if k not in derived}, derived


def layout_mismatches(state: dict[str, torch.Tensor], family: ModelFamily, variant: str) -> list[str]:
    """Human-readable differences between a native state dict and what ``variant`` expects."""
    want = expected_shapes(family, variant)
    got = {k: tuple(v.shape) for k, v in _split_derived(state, family)[0].items()}
    problems = [f"shape of {k}: checkpoint {got[k]}, {variant} expects {want[k]}"
                for k in want if k in got and got[k] != want[k]]
    problems += [f"missing key {k} {want[k]}" for k in want if k not in got]
    problems += [f"unexpected key {_shown(k)} {got[k]}" for k in got if k not in want]
    return problems


def identify_variant(state: dict[str, torch.Tensor], family: ModelFamily) -> str | None:
    """The variant of ``family`` whose keys and shapes match the state dict exactly, if any."""
    for variant in family.variants:
        if not layout_mismatches(state, family, variant):
            return variant
    return None


def _check_derived_and_finite(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    params, derived = _split_derived(ckpt.state_dict, ckpt.family)
    own = dict(model.named_buffers())
    for key, value in derived.items():
        if key in own and not torch.equal(value.to(own[key].dtype), own[key]):
            raise CheckpointError(f"{ckpt.path}: {key} differs from the attention bias layout this model derives")
    bad = [k for k, v in params.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{ckpt.path}: non-finite values (NaN or Inf) in {', '.join(bad[:_MAX_LISTED])}")


def load_into_model(ckpt: Checkpoint, variant: str | None) -> tuple[torch.nn.Module, str]:
    """Build the model for ``variant`` of the checkpoint's family (identified from the checkpoint when None) and
    load the weights."""
    family = ckpt.family
    found = identify_variant(ckpt.state_dict, family)
    if variant is None:
        if found is None:
            closest = min(family.variants, key=lambda v: len(layout_mismatches(ckpt.state_dict, family, v)))
            problems = layout_mismatches(ckpt.state_dict, family, closest)
            raise CheckpointError(
                f"{ckpt.path}: the {ckpt.layout}-layout checkpoint matches no {family.title} variant; closest is "
                f"{closest}, which differs in {len(problems)} keys: "
                + "; ".join(problems[:_MAX_LISTED])
            )
        variant = found
    problems = layout_mismatches(ckpt.state_dict, family, variant)
    if problems:
        holds = (f"it holds {found} weights" if found
                 else f"it matches no {family.title} variant")
        raise CheckpointError(
            f"{ckpt.path}: checkpoint does not fit {family.display_name}-{variant} ({holds}); {len(problems)} "
            "differences, first: " + "; ".join(problems[:_MAX_LISTED])
        )
    model = family.build(variant)
    _check_derived_and_finite(ckpt, model)
    params, _ = _split_derived(ckpt.state_dict, family)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in params.items()}, strict=True)
    return model.eval(), variant
