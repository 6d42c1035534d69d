"""Fuzzing the four readers of files that come from strangers: checkpoints, recipes, manifests and bundles.

Property, for every reader: a mutated valid input never makes it raise anything but its documented error (a
subclass of EfexportError whose message is one non-empty line), or it parses / reports normally:

- checkpoints (``load_model`` over ``read_checkpoint``): a LoadedModel whose model runs, or CheckpointError. Inputs:
  byte edits of a real l1 ``.pth`` (upstream layout, torch.save zip) and ``.safetensors`` (timm layout), and
  structural edits of the state dict before it is saved (keys dropped, added, renamed; shapes, dtypes and layouts
  changed; tensors replaced by other objects; NaN/Inf; other nestings).
- recipes (``load_recipe``, ``parse_recipe``, ``apply_overrides``): a Recipe, or RecipeError. Inputs: the shipped
  recipes with keys deleted, values replaced at any depth, unknown keys added, and byte edits of the TOML text.
- manifests (``read_manifest``, ``schema_problems``, ``check_manifest``, ``verify_artifact``): VerifyError, or a
  report that does not pass when the manifest breaks its schema or its file table, or states a fact other than
  the model carries. Inputs: the manifest of a real l1 ONNX package, edited as JSON and as bytes.
- bundles (``verify_package`` over ``opened_bundle``, ``check_members``, ``checksum_problems``): VerifyError, or a
  report; and nothing is ever written outside the private extraction folder. Inputs: zips built member by member
  (hostile names, links, bombs, patched headers) and byte edits of the real bundle of that package.

Inputs are real files made by the real code and go through the real code paths; nothing is mocked.
``derandomize=True`` makes every run try the same examples (reproducible in CI); the example counts are small
because each checkpoint example reads and loads a 47 MB file and each full verification runs parity.
``EFEXPORT_FUZZ_SCALE=10`` multiplies them for a deeper local search. The number of examples each test ran is
printed when the module ends ("fuzz examples run: ..."); ``--hypothesis-show-statistics`` adds the outcomes.

Every bug this fuzzing found is fixed and pinned by a plain regression test at the end, with its minimal input.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import tomllib
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from efexport.exporter.bundle import checksum_problems, is_bundle, write_bundle
from efexport.exporter.errors import CheckpointError, EfexportError, ExitCode, RecipeError, VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, read_manifest
from efexport.exporter.manifest_schema import check_manifest, schema_problems
from efexport.exporter.models.checkpoint import read_checkpoint
from efexport.exporter.recipes import RECIPES_DIR, Recipe, apply_overrides, load_recipe, parse_recipe
from efexport.exporter.stages.load import load_model
from efexport.exporter.verify import VerifyReport, verify_artifact, verify_package
from tests.helpers import realistic_model, timm_state_dict, upstream_state_dict
from tests.packages import exported_package

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared package once

# EFEXPORT_FUZZ_SCALE=10 runs ten times the examples (a deeper local search; CI keeps the default of 1).
SCALE = float(os.environ.get("EFEXPORT_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
EXAMPLES: Counter[str] = Counter()  # examples each test ran, printed when the module ends
PASSED_DESPITE_EDITS: list[str] = []  # schema-valid manifest edits that verify cannot see (reported, not failed)


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


@pytest.fixture(scope="module", autouse=True)
def _example_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not EXAMPLES:
        return
    with capture.global_and_fixture_disabled():  # printed even when the tests pass
        reporter.ensure_newline()
        reporter.write_line("fuzz examples run: " + ", ".join(f"{k}={n}" for k, n in sorted(EXAMPLES.items())))
        if PASSED_DESPITE_EDITS:
            reporter.write_line(f"fuzz: {len(PASSED_DESPITE_EDITS)} schema-valid manifest edits passed verify, e.g. "
                                + "; ".join(PASSED_DESPITE_EDITS[:3]))


def _event(outcome: str) -> None:
    """An outcome for --hypothesis-show-statistics (the plain regression tests share the checks)."""
    if currently_in_test_context():
        event(outcome)


def _documented(exc: EfexportError) -> None:
    """A documented error: a message the CLI can print as one line."""
    _event(f"refused: {type(exc).__name__}")
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} with an empty message"
    assert "\n" not in message and "\r" not in message, f"{type(exc).__name__} message spans lines: {message!r}"


# ------------------------------------------------------------------------------------------- byte edits


@dataclass(frozen=True)
class Edit:
    """One byte-level change: truncate at, overwrite at, xor at, insert at, or delete ``length`` bytes at."""

    kind: str
    offset: int
    data: bytes = b""
    length: int = 0


def byte_edits(size: int, hot: list[tuple[int, int]], max_edits: int = 3) -> st.SearchStrategy[list[Edit]]:
    """Edits at any offset, half of them in ``hot`` ranges (headers, directories) where a change matters most."""
    anywhere = st.integers(0, size - 1)
    offsets = st.one_of(st.sampled_from(hot).flatmap(lambda r: st.integers(r[0], r[1] - 1)), anywhere) if hot \
        else anywhere
    edit = st.one_of(
        st.builds(Edit, st.just("truncate"), offsets),
        st.builds(Edit, st.just("overwrite"), offsets, st.binary(min_size=1, max_size=16)),
        st.builds(Edit, st.just("xor"), offsets, st.lists(st.integers(1, 255), min_size=1, max_size=4).map(bytes)),
        st.builds(Edit, st.just("insert"), offsets, st.binary(min_size=1, max_size=64)),
        st.builds(Edit, st.just("delete"), offsets, length=st.integers(1, 4096)),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def apply_edits(original: bytes, edits: list[Edit]) -> bytes:
    buf = bytearray(original)
    for edit in edits:
        at = min(edit.offset, len(buf))  # an earlier truncation may have moved the end
        if edit.kind == "truncate":
            del buf[at:]
        elif edit.kind == "overwrite":
            buf[at:at + len(edit.data)] = edit.data
        elif edit.kind == "xor":
            chunk = buf[at:at + len(edit.data)]
            buf[at:at + len(chunk)] = bytes(a ^ b for a, b in zip(chunk, edit.data, strict=False))
        elif edit.kind == "insert":
            buf[at:at] = edit.data
        else:
            del buf[at:at + edit.length]
    return bytes(buf)


# ------------------------------------------------------------------------------------------ checkpoints

IMAGE = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class FuzzedFile:
    """A real file's bytes and the ranges where edits matter most."""

    data: bytes
    suffix: str
    hot: list[tuple[int, int]]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints a failing test's arguments
        printer.text(f"<{self.suffix} file of {len(self.data)} bytes>")


def _hot_ranges_pth(path: Path) -> list[tuple[int, int]]:
    """The pickle (first member), every member's local header, and the central directory at the end."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        infos, start_dir = archive.infolist(), archive.start_dir
    headers = [(i.header_offset, min(size, i.header_offset + 30 + len(i.filename) + 64)) for i in infos]
    return [(0, min(size, infos[0].file_size + 100)), (start_dir, size), *headers]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FuzzedFile]:
    """A realistic l1 checkpoint as upstream saves it (.pth, under "model") and as timm does (.safetensors)."""
    model = realistic_model("l1")
    root = tmp_path_factory.mktemp("fuzz-checkpoints")
    pth, safetensors = root / "l1-upstream.pth", root / "l1-timm.safetensors"
    torch.save({"model": upstream_state_dict(model)}, pth)
    save_file({k: v.contiguous() for k, v in timm_state_dict(model).items()}, str(safetensors))
    header = 8 + struct.unpack("<Q", safetensors.read_bytes()[:8])[0]  # u64 length, then the JSON header
    files = {"pth": FuzzedFile(pth.read_bytes(), ".pth", _hot_ranges_pth(pth)),
             "safetensors": FuzzedFile(safetensors.read_bytes(), ".safetensors", [(0, header), (header, header + 64)])}
    pth.unlink()
    safetensors.unlink()
    return files


def _load_or_refuse(path: Path, variant: str | None, finite_output: bool) -> None:
    """The property: a LoadedModel whose model runs on an image, or CheckpointError; anything else is a bug."""
    try:
        loaded = load_model(path, variant, seed=0)
    except CheckpointError as exc:
        _documented(exc)
        assert exc.exit_code == ExitCode.BAD_INPUT
        return
    assert loaded.variant == (variant or loaded.variant) and not loaded.is_random
    _event("loaded")
    with torch.no_grad():
        out = loaded.model(IMAGE)
    assert out.shape == (1, 1000)
    if finite_output:
        assert torch.isfinite(out).all(), "a checkpoint with finite weights gave non-finite logits"


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@settings(FUZZ, max_examples=examples(16))
@given(data=st.data())
def test_mutated_checkpoint_bytes_load_or_are_refused(fmt: str, checkpoints: dict[str, FuzzedFile],
                                                      tmp_path_factory: pytest.TempPathFactory,
                                                      data: st.DataObject) -> None:
    original = checkpoints[fmt]
    # Everything drawn before any work: hypothesis may discard an example at a draw, wasting what ran before it.
    edits = data.draw(byte_edits(len(original.data), original.hot), label="edits")
    variant = data.draw(st.sampled_from([None, "l1"]), label="variant")
    EXAMPLES[f"checkpoint-bytes-{fmt}"] += 1
    path = tmp_path_factory.getbasetemp() / f"fuzz-checkpoint{original.suffix}"
    path.write_bytes(apply_edits(original.data, edits))
    try:
        # Not checked finite: an edit in the tensor data can leave finite but huge weights (an exponent bit), and
        # those overflow in the forward pass; the loader refuses NaN/Inf weights, not large ones.
        _load_or_refuse(path, variant, finite_output=False)
    finally:
        path.unlink(missing_ok=True)


# State-dict edits: (kind, key index (taken modulo the number of keys), payload).
DTYPES = [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float64,
          torch.complex64]
PREFIXES = ["patch_embed.", "network.", "network.6.4.", "stem.", "stages.", "stages.3.blocks.4.", "module.",
            "dist_head.", "head.", "norm.", ""]
KEY_NAMES = st.one_of(
    st.text(max_size=24),
    st.tuples(st.sampled_from(PREFIXES), st.text(max_size=12)).map("".join),
    st.sampled_from([
        "network." + "9" * 5000 + ".0.mlp.fc1.weight",  # an index too long for int()
        "network.0.0.mlp.mid.conv.weight",  # what EfficientFormerV2 has
        "stem.conv1.weight", "network.0.0.attention_bias_idxs", "stages.3.downsample.conv.weight",
        "network.1.proj.weight", "network.01.0.mlp.fc1.weight", "network.٣.0.mlp.fc1.weight",
    ]),
)
SHAPES = st.lists(st.integers(0, 8), max_size=4).map(tuple)
OBJECTS = st.one_of(st.integers(), st.floats(), st.text(max_size=10), st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), st.none(),
                    st.just({"nested": {"weight": torch.zeros(2)}}))
_INDEX = st.integers(0, 10_000)


LAYOUTS = {
    "sparse": lambda t: t.to_sparse(),
    "parameter": lambda t: torch.nn.Parameter(t.float().clone()),
    "meta": lambda t: torch.empty_like(t, device="meta"),
    "quantized": lambda t: torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8),
}


def _tensor_edits(objects: bool) -> st.SearchStrategy[tuple]:
    edits = [
        st.tuples(st.just("drop"), _INDEX),
        st.tuples(st.just("add"), KEY_NAMES, SHAPES),
        st.tuples(st.just("rename"), _INDEX, KEY_NAMES),
        st.tuples(st.just("prefix"), _INDEX, st.sampled_from(["module.", "model.", "network.", "stem."])),
        st.tuples(st.just("reshape"), _INDEX, SHAPES),
        st.tuples(st.just("dtype"), _INDEX, st.sampled_from(DTYPES)),
        st.tuples(st.just("nonfinite"), _INDEX, st.sampled_from([float("nan"), float("inf"), -float("inf")]), _INDEX),
        st.tuples(st.just("swap"), _INDEX, _INDEX),
    ]
    if objects:  # .pth only: safetensors files hold nothing but dense tensors
        edits += [st.tuples(st.just("object"), _INDEX, OBJECTS),
                  st.tuples(st.just("layout"), _INDEX, st.sampled_from(sorted(LAYOUTS)))]
    return st.one_of(edits)


def _plain(value: object) -> bool:
    """A dense tensor with data: the edits that change a tensor apply to these (torch has no sparse int8 etc.)."""
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and not (
        value.is_quantized or value.is_meta or value.is_complex())


def _edit_state(state: dict[str, Any], edits: list[tuple]) -> dict[str, Any]:
    """A new dict with ``edits`` applied; the (shared, cached) tensors of ``state`` are never changed in place."""
    state = dict(state)
    for kind, *args in edits:
        if kind == "add":
            state[args[0]] = torch.randn(args[1])
            continue
        if not state:
            continue
        keys = list(state)
        key = keys[args[0] % len(keys)]
        value = state[key]
        if kind in ("dtype", "nonfinite", "layout") and not _plain(value):
            continue
        if kind == "drop":
            del state[key]
        elif kind == "rename":
            state[args[1]] = state.pop(key)
        elif kind == "prefix":
            state[args[1] + key] = state.pop(key)
        elif kind == "reshape":
            state[key] = torch.randn(args[1])
        elif kind == "dtype":
            state[key] = value.to(args[1])
        elif kind == "nonfinite" and value.numel():
            changed = value.detach().clone() if value.is_floating_point() else value.float()
            changed.view(-1)[args[2] % changed.numel()] = args[1]
            state[key] = changed
        elif kind == "swap":
            other = keys[args[1] % len(keys)]
            state[key], state[other] = state[other], value
        elif kind == "object":
            state[key] = args[1]
        elif kind == "layout":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quantized tensors are deprecated; checkpoints may still hold them
                state[key] = LAYOUTS[args[1]](value)
    return state


def _training_checkpoint(state: object) -> dict:
    return {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 299,
            "args": argparse.Namespace(model="efficientformer_l1")}


WRAPPERS = {
    "bare": lambda s: s, "model": lambda s: {"model": s}, "state_dict": lambda s: {"state_dict": s},
    "model_state_dict": lambda s: {"model_state_dict": s}, "weights": lambda s: {"weights": s},
    "twice": lambda s: {"model": {"model": s}}, "list": lambda s: [s], "tuple": lambda s: (s, 1),
    "training": _training_checkpoint, "mixed": lambda s: {"model": s, "state_dict": {"x": 1}},
    "tensor-key": lambda s: {torch.zeros(2, 2): s},  # its repr spans lines
}


@settings(FUZZ, max_examples=examples(24))
@given(fmt=st.sampled_from(["upstream.pth", "timm.pth", "timm.safetensors"]), data=st.data())
def test_mutated_state_dicts_load_or_are_refused(fmt: str, tmp_path_factory: pytest.TempPathFactory,
                                                 data: st.DataObject) -> None:
    layout, suffix = fmt.split(".")
    edits = data.draw(st.lists(_tensor_edits(objects=suffix == "pth"), min_size=1, max_size=3), label="edits")
    wrap = data.draw(st.sampled_from(sorted(WRAPPERS)), label="nesting") if suffix == "pth" else "bare"
    variant = data.draw(st.sampled_from([None, "l1", "l3", "l9"]), label="variant")
    EXAMPLES["checkpoint-structure"] += 1
    model = realistic_model("l1")
    state = _edit_state(upstream_state_dict(model) if layout == "upstream" else timm_state_dict(model), edits)
    path = tmp_path_factory.getbasetemp() / f"fuzz-structure.{suffix}"
    try:
        if suffix == "safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(WRAPPERS[wrap](state), path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation warnings for the odd tensors it reads back
            _load_or_refuse(path, variant, finite_output=True)
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- recipes

SHIPPED_RECIPES = {p.name: p.read_bytes() for p in sorted(RECIPES_DIR.glob("*.toml"))}
# Table keys without line breaks: recipes.py puts an unknown key into its message as is, and a key with a line
# break makes that message span lines (test_an_unknown_key_with_a_line_break_gives_a_one_line_message).
TOML_KEYS = st.text(max_size=10)
TOML_SCALARS = st.one_of(
    st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**40, 0, -1]), st.floats(), st.text(max_size=12),
    st.booleans(), st.datetimes(timezones=st.none() | st.just(dt.UTC)), st.dates(), st.times(), st.none(),
)
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(TOML_KEYS, inner, max_size=3), max_leaves=6)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """The path of every value under ``node`` (tables and arrays included), depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = []
    for key, value in items:
        found += [(*prefix, key), *_paths(value, (*prefix, key))]
    return found


def _at(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


TREE_EDITS = st.one_of(
    st.tuples(st.just("delete"), _INDEX),
    st.tuples(st.just("replace"), _INDEX, TOML_VALUES),
    st.tuples(st.just("add"), _INDEX, TOML_KEYS, TOML_VALUES),
)


def _edit_tree(tree: Any, edits: list[tuple]) -> Any:
    """A deep copy of ``tree`` with values deleted, replaced or added at paths picked by index."""
    tree = copy.deepcopy(tree)
    for kind, index, *args in edits:
        paths = _paths(tree)
        if kind == "add":
            containers = [(), *(p for p in paths if isinstance(_at(tree, p), (dict, list)))]
            target = _at(tree, containers[index % len(containers)])
            if isinstance(target, dict):
                target[args[0]] = args[1]
            else:
                target.append(args[1])
        elif paths:
            *parent, last = paths[index % len(paths)]
            if kind == "delete":
                del _at(tree, tuple(parent))[last]
            else:
                _at(tree, tuple(parent))[last] = args[0]
    return tree


def _parse_or_refuse(data: dict) -> Recipe | None:
    try:
        recipe = parse_recipe(data, "recipe fuzz.toml")
    except RecipeError as exc:
        _documented(exc)
        return None
    # What apply_overrides does with every recipe the CLI loads: the dump must validate again, to the same recipe.
    assert apply_overrides(recipe, {}) == recipe
    _event("parsed")
    return recipe


@settings(FUZZ, max_examples=examples(250))
@given(name=st.sampled_from(sorted(SHIPPED_RECIPES)), edits=st.lists(TREE_EDITS, min_size=1, max_size=4))
def test_recipe_tables_with_edited_values_parse_or_are_refused(name: str, edits: list[tuple]) -> None:
    """Edits of the parsed table: what load_recipe hands parse_recipe after tomllib (no TOML writer needed)."""
    EXAMPLES["recipe-tree"] += 1
    _parse_or_refuse(_edit_tree(tomllib.loads(SHIPPED_RECIPES[name].decode()), edits))


TOML_TOKENS = [b"[", b"]", b"[[", b"]]", b"=", b'"', b"'", b"'''", b'"""', b"{", b"}", b",", b"#", b"\n", b".",
               b"\n[export]\n", b"\n[parity.tolerances.fp16]\n", b"opset = 17\n", b"inf", b"nan", b"-0", b"0x7f",
               b"1979-05-27T07:32:00Z", b"true", b"\\u0000", b"\\", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80",
               b"\x00", b"\r", b"\xef\xbb\xbf"]
TEXT_EDITS = st.lists(st.one_of(
    st.builds(Edit, st.just("truncate"), st.integers(0, 4096)),
    st.builds(Edit, st.just("insert"), st.integers(0, 4096),
              st.one_of(st.sampled_from(TOML_TOKENS), st.binary(min_size=1, max_size=8),
                        st.text(min_size=1, max_size=8).map(str.encode))),
    st.builds(Edit, st.just("overwrite"), st.integers(0, 4096), st.sampled_from(TOML_TOKENS)),
    st.builds(Edit, st.just("delete"), st.integers(0, 4096), length=st.integers(1, 40)),
), min_size=1, max_size=4)


@settings(FUZZ, max_examples=examples(250))
@given(name=st.sampled_from(sorted(SHIPPED_RECIPES)), edits=TEXT_EDITS)
def test_recipe_files_with_edited_bytes_load_or_are_refused(name: str, edits: list[Edit],
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    EXAMPLES["recipe-text"] += 1
    path = tmp_path_factory.getbasetemp() / "fuzz-recipe.toml"
    path.write_bytes(apply_edits(SHIPPED_RECIPES[name], edits))
    try:
        recipe, raw = load_recipe(path)
    except RecipeError as exc:
        _documented(exc)
        return
    assert isinstance(raw, dict) and apply_overrides(recipe, {}) == recipe
    _event("parsed")


def _leaves(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a recipe dump's values (tables are descended into, not overridden whole)."""
    if not isinstance(node, dict):
        return [prefix]
    return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")] if node else [prefix]


SHIPPED_LEAVES = {name: [leaf.removesuffix(".") for leaf in _leaves(parse_recipe(
    tomllib.loads(text.decode()), name).model_dump())] for name, text in SHIPPED_RECIPES.items()}


@settings(FUZZ, max_examples=examples(200))
@given(name=st.sampled_from(sorted(SHIPPED_RECIPES)), data=st.data())
def test_overrides_of_recipe_values_apply_or_are_refused(name: str, data: st.DataObject) -> None:
    """The CLI's dotted keys (those of the recipe's own values) with values of any type."""
    overrides = data.draw(st.dictionaries(st.sampled_from(SHIPPED_LEAVES[name]), TOML_VALUES, max_size=4),
                          label="overrides")
    EXAMPLES["recipe-overrides"] += 1
    recipe = parse_recipe(tomllib.loads(SHIPPED_RECIPES[name].decode()), name)
    try:
        changed = apply_overrides(recipe, overrides)
    except RecipeError as exc:
        _documented(exc)
        return
    assert isinstance(changed, Recipe)
    _event("applied")


@settings(FUZZ, max_examples=examples(200), report_multiple_bugs=False,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: the reason names minimal inputs
@given(name=st.sampled_from(sorted(SHIPPED_RECIPES)),
       overrides=st.dictionaries(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", max_size=30), TOML_VALUES,
                                 max_size=3))
def test_overrides_with_any_dotted_key_apply_or_are_refused(name: str, overrides: dict[str, Any]) -> None:
    EXAMPLES["recipe-overrides-any-key"] += 1
    recipe = parse_recipe(tomllib.loads(SHIPPED_RECIPES[name].decode()), name)
    try:
        apply_overrides(recipe, overrides)
    except RecipeError as exc:
        _documented(exc)


# -------------------------------------------------------------------------------------------- manifests

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**30]),
                         st.floats(), st.text(max_size=16))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
# JSON texts no Python value serialises to: dropped in where a marker string is, after json.dumps.
RAW_JSON = ["[" * 50 + "]" * 50, "[" * 5000 + "]" * 5000, '{"a":' * 200_000 + "1" + "}" * 200_000,
            "1" * 5000, "-" + "9" * 4400, "1e999", "-1e999", "1" * 400 + ".5e-99999", "NaN", "-Infinity", '"\\ud800"']
MANIFEST_TREE_EDITS = st.one_of(
    st.tuples(st.just("delete"), _INDEX),
    st.tuples(st.just("replace"), _INDEX, JSON_VALUES | st.sampled_from([f"@@{i}@@" for i in range(len(RAW_JSON))])),
    st.tuples(st.just("add"), _INDEX, st.text(max_size=10), JSON_VALUES),
)
MANIFEST_BYTE_EDITS = st.lists(st.one_of(
    st.builds(Edit, st.just("truncate"), st.integers(0, 1 << 14)),
    st.builds(Edit, st.just("insert"), st.integers(0, 1 << 14),
              st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"[", b"{", b'"', b",", b"\\"])
              | st.binary(min_size=1, max_size=8)),
    st.builds(Edit, st.just("overwrite"), st.integers(0, 1 << 14), st.binary(min_size=1, max_size=4)),
    st.builds(Edit, st.just("delete"), st.integers(0, 1 << 14), length=st.integers(1, 64)),
), max_size=2)


@dataclass(frozen=True)
class MutatedManifest:
    tree_edits: list[tuple]
    byte_edits: list[Edit]
    text: bytes

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # the edits, not the 12 kB they give
        printer.text(f"MutatedManifest(tree_edits={self.tree_edits!r}, byte_edits={self.byte_edits!r})")


@st.composite
def mutated_manifests(draw: st.DrawFn, original: dict) -> MutatedManifest:
    tree_edits = draw(st.lists(MANIFEST_TREE_EDITS, max_size=3))
    text = json.dumps(_edit_tree(original, tree_edits), indent=2)
    for i, raw in enumerate(RAW_JSON):
        text = text.replace(f'"@@{i}@@"', raw)
    byte_edits = draw(MANIFEST_BYTE_EDITS)
    return MutatedManifest(tree_edits, byte_edits, apply_edits(text.encode(), byte_edits))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_package("onnx", tmp_path_factory)[0]  # shared with other modules: never changed here


def _link_package(package: Path, into: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of ``package`` whose large files are hard links (same bytes, so the same hashes)."""
    into.mkdir(parents=True)
    for source in package.iterdir():
        if source.name in (MANIFEST_FILE, *skip):
            continue
        try:
            os.link(source, into / source.name)
        except OSError:
            shutil.copy2(source, into / source.name)
    return into


def _check_report(report: VerifyReport, must_fail: bool) -> None:
    assert isinstance(report, VerifyReport)
    _event(f"report: {'passed' if report.passed else 'failed'}, parity {'ran' if report.parity else 'did not run'}")
    assert report.passed == (not report.problems)
    assert all(isinstance(p, str) and p.strip() for p in report.problems)
    if must_fail:
        assert not report.passed, "a manifest that breaks its schema or file table, or lies about its model, verified"
    if report.passed:
        assert report.parity is not None and report.parity.passed, "verified without a passing parity run"


# What a model does not carry (exporter.manifest: the file table, and the timings that differ on every run)
NOT_IN_THE_MODEL = ("files", "latency", "latency_note")


def _must_fail(manifest: dict, original: dict) -> bool:
    """Breaks the schema, records other files or hashes than the package has, or states another fact than the
    model carries (any but its timings): verify must not pass it."""
    if schema_problems(manifest):
        return True
    files = manifest["files"]
    facts = [{key: value for key, value in m.items() if key not in NOT_IN_THE_MODEL} for m in (manifest, original)]
    return set(files) != set(original["files"]) or any(
        files[name]["sha256"] != entry["sha256"] for name, entry in original["files"].items()) or facts[0] != facts[1]


@pytest.fixture(scope="module")
def manifest_dirs(package: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The package without its model (verify cannot run parity: cheap examples) and the whole package."""
    root = tmp_path_factory.mktemp("fuzz-manifests")
    return {"light": _link_package(package, root / "light", skip=("model.onnx",)),
            "full": _link_package(package, root / "full")}


def _read_and_check(directory: Path, mutated: MutatedManifest) -> dict | None:
    """read_manifest and the schema checks: the manifest, or None after a documented VerifyError."""
    (directory / MANIFEST_FILE).write_bytes(mutated.text)
    try:
        manifest = read_manifest(directory)
    except VerifyError as exc:
        _documented(exc)
        return None
    assert isinstance(manifest, dict)
    problems = schema_problems(manifest)
    assert all(isinstance(p, str) and p.strip() for p in problems)
    try:
        check_manifest(manifest, str(directory))
    except VerifyError as exc:
        _documented(exc)
        assert problems
    else:
        assert not problems
    return manifest


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_mutated_manifests_are_refused_or_reported(package: Path, manifest_dirs: dict[str, Path],
                                                   data: st.DataObject) -> None:
    """The readers and verify_artifact up to parity: the model file is absent, so a pass would be a bug."""
    outcome = _verify_mutated(package, manifest_dirs["light"], data, "manifest-readers")
    if outcome is not None:
        _check_report(outcome[0], must_fail=True)


def _verify_mutated(package: Path, directory: Path, data: st.DataObject,
                    counter: str) -> tuple[VerifyReport, dict, dict] | None:
    """(report, mutated manifest, original) of verify_artifact on ``directory`` holding a mutated manifest; None
    when a reader refused it with a documented error first."""
    original = read_manifest(package)
    mutated = data.draw(mutated_manifests(original), label="manifest")
    EXAMPLES[counter] += 1
    manifest = _read_and_check(directory, mutated)
    if manifest is None:
        return None
    try:
        return verify_artifact(directory), manifest, original
    except VerifyError as exc:
        _documented(exc)
        return None


@settings(FUZZ, max_examples=examples(6))
@given(data=st.data())
def test_mutated_manifests_of_a_whole_package_fail_verification(package: Path, manifest_dirs: dict[str, Path],
                                                                data: st.DataObject) -> None:
    """verify_artifact on the whole package, parity included (about a second an example: few examples)."""
    outcome = _verify_mutated(package, manifest_dirs["full"], data, "manifest-verify")
    if outcome is None:
        return
    report, manifest, original = outcome
    must_fail = _must_fail(manifest, original)
    _check_report(report, must_fail)
    if report.passed and manifest != original:
        # Not a failure: verify checks the schema, the file hashes, every fact against the model's own copy and
        # parity, but not the latency figures (the model does not carry them; a signature covers them). Listed in
        # the summary for the report.
        PASSED_DESPITE_EDITS.append(_first_difference(original, manifest))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b or a[key] != b[key]:
                if key in a and key in b:
                    return _first_difference(a[key], b[key], f"{path}/{key}")
                return f"{path}/{key} {'added' if key in b else 'deleted'}"
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}/{i}")
    return f"{path}: {str(a)[:40]!r} -> {str(b)[:40]!r}"


# ---------------------------------------------------------------------------------------------- bundles


@dataclass(frozen=True)
class Sandbox:
    """Where a bundle is read: ``inbox`` holds it; the extraction goes to a private folder in ``sentinel``."""

    root: Path
    inbox: Path
    sentinel: Path

    def snapshot(self) -> set[Path]:
        return {p for p in self.root.rglob("*") if self.inbox not in p.parents}

    def clear_inbox(self) -> None:
        for path in self.inbox.iterdir():
            path.unlink()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Bundles are extracted under the temp dir: make that a sentinel folder whose contents the tests watch."""
    root = tmp_path_factory.mktemp("fuzz-bundles")
    box = Sandbox(root, root / "inbox", root / "sentinel")
    box.inbox.mkdir()
    box.sentinel.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(box.sentinel))
        yield box


@contextlib.contextmanager
def _nothing_escapes(box: Sandbox) -> Iterator[None]:
    before = box.snapshot()
    try:
        yield
    finally:
        box.clear_inbox()
    after = box.snapshot()
    assert after == before, f"written outside the extraction folder: {sorted(map(str, after - before))[:5]}"


def _verify_bundle(path: Path) -> None:
    """The property for a bundle: VerifyError, or a report (which cannot pass without a passing parity run)."""
    assert is_bundle(path)
    assert all(isinstance(p, str) for p in checksum_problems(path))
    try:
        report = verify_package(path)
    except VerifyError as exc:
        _documented(exc)
        return
    _check_report(report, must_fail=False)


TOP = "efficientformer-l1-onnx-fp32"
SEGMENTS = st.one_of(
    st.sampled_from(["..", ".", "", TOP, "manifest.json", "README.md", "a\\b", "..\\x", "C:", "c:x", "x\x00y", "é",
                     "\u202e", "😀", " ", "~", "n" * 300]),
    st.text(min_size=1, max_size=10),
)
MEMBER_NAMES = st.one_of(
    st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join),
    st.lists(SEGMENTS, min_size=1, max_size=3).map(lambda parts: f"{TOP}/" + "/".join(parts)),  # past the top check
    st.sampled_from(["{sentinel}/abs-escape", "/{sentinel}/../abs-escape", "../escape", f"{TOP}/../../escape",
                     f"{TOP}/./manifest.json", f"{TOP}//manifest.json", "", "/", "./", f"{TOP}/"]),
)
MEMBER_DATA = st.one_of(st.binary(max_size=32), st.integers(0, 1 << 21).map(bytes),  # zeros: a small zip bomb
                        st.sampled_from(["@manifest", "@readme"]))


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # file, dir, exec, symlink
    data: bytes | str


MEMBERS = st.builds(Member, MEMBER_NAMES, st.sampled_from(["file", "file", "dir", "exec", "symlink"]), MEMBER_DATA)
# (field, member index, value): raw changes of a central-directory or local header after zipfile wrote it.
_CENTRAL = {"flags": (8, 2), "method": (10, 2), "crc": (16, 4), "csize": (20, 4), "usize": (24, 4),
            "extattr": (38, 4), "offset": (42, 4)}
_LOCAL = {"local_flags": (6, 2), "local_method": (8, 2), "local_csize": (18, 4), "local_usize": (22, 4),
          "local_namelen": (26, 2)}
HEADER_PATCHES = st.one_of(
    st.tuples(st.sampled_from(["flags", "local_flags"]), _INDEX, st.sampled_from([0x1, 0x8, 0x40, 0x800, 0xFFFF])),
    st.tuples(st.sampled_from(["method", "local_method"]), _INDEX, st.sampled_from([1, 6, 9, 12, 14, 93, 99, 0xFFFF])),
    st.tuples(st.sampled_from(["csize", "usize", "local_csize", "local_usize"]), _INDEX,
              st.sampled_from([0, 1, 1 << 31, 0xFFFFFFFE, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.sampled_from(["crc", "extattr", "offset", "local_namelen"]), _INDEX, st.integers(0, 0xFFFF)),
    st.tuples(st.just("name"), _INDEX, st.sampled_from([0x00, 0x2F, 0x5C, 0x2E, 0xFF, 0x80, 0xC3])),
)


def _central_entries(raw: bytes) -> list[int]:
    """Offsets of the central-directory entries of a zip zipfile wrote (no zip64, no comment)."""
    end = raw.rfind(b"PK\x05\x06")
    count, start = struct.unpack("<H", raw[end + 10:end + 12])[0], struct.unpack("<I", raw[end + 16:end + 20])[0]
    entries, at = [], start
    for _ in range(count):
        if raw[at:at + 4] != b"PK\x01\x02":
            break
        entries.append(at)
        at += 46 + sum(struct.unpack("<HHH", raw[at + 28:at + 34]))
    return entries


def _patch_headers(raw: bytes, patches: list[tuple]) -> bytes:
    buf = bytearray(raw)
    entries = _central_entries(raw)
    for header_field, index, value in patches:
        if not entries:
            break
        entry = entries[index % len(entries)]
        if header_field == "name":
            length = struct.unpack("<H", buf[entry + 28:entry + 30])[0]
            if length:
                buf[entry + 46 + index % length] = value
            continue
        base = entry if header_field in _CENTRAL else struct.unpack("<I", raw[entry + 42:entry + 46])[0]
        offset, width = _CENTRAL.get(header_field) or _LOCAL[header_field]
        if base + offset + width <= len(buf):
            buf[base + offset:base + offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(buf)


def _zip_info(member: Member, sentinel: Path) -> zipfile.ZipInfo:
    name = member.name.replace("{sentinel}", str(sentinel).lstrip("/"))
    if member.kind == "dir" and not name.endswith("/"):
        name += "/"
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.compress_type = zipfile.ZIP_DEFLATED
    mode = {"file": stat.S_IFREG | 0o644, "exec": stat.S_IFREG | 0o755, "dir": stat.S_IFDIR | 0o755,
            "symlink": stat.S_IFLNK | 0o777}[member.kind]
    info.external_attr = mode << 16
    return info


class PackageFiles(dict):
    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("<the package's manifest.json and README.md>")


@pytest.fixture(scope="module")
def package_members(package: Path) -> PackageFiles:
    return PackageFiles({"@manifest": (package / MANIFEST_FILE).read_bytes(),
                         "@readme": (package / "README.md").read_bytes()})


@settings(FUZZ, max_examples=examples(200))
@given(like_a_package=st.booleans(), members=st.lists(MEMBERS, max_size=5), patches=st.lists(HEADER_PATCHES,
       max_size=3), sidecar=st.sampled_from(["none", "matching", "wrong", "garbage"]))
def test_hostile_bundles_are_refused_or_reported(package_members: PackageFiles, sandbox: Sandbox,
                                                 like_a_package: bool, members: list[Member], patches: list[tuple],
                                                 sidecar: str) -> None:
    EXAMPLES["bundle-built"] += 1
    if like_a_package:  # the real manifest and card first, so that reading gets past the member checks
        members = [Member(f"{TOP}/manifest.json", "file", "@manifest"), Member(f"{TOP}/README.md", "file", "@readme"),
                   *members]
    path = sandbox.inbox / f"{TOP}.zip"
    with _nothing_escapes(sandbox):
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
            warnings.simplefilter("ignore")  # "Duplicate name": duplicates are part of the fuzz
            for member in members:
                data = package_members.get(member.data, member.data) if isinstance(member.data, str) else member.data
                archive.writestr(_zip_info(member, sandbox.sentinel), b"" if member.kind == "dir" else data)
        raw = _patch_headers(path.read_bytes(), patches)
        path.write_bytes(raw)
        _write_sidecar(path, raw, sidecar)
        _verify_bundle(path)


def _write_sidecar(path: Path, raw: bytes, kind: str) -> None:
    digest = hashlib.sha256(raw).hexdigest()
    lines = {"matching": f"{digest}  {path.name}\n", "wrong": f"{'0' * 64}  {path.name}\n",
             "garbage": "\x00not a\nsha256sum line \udcff\n"}
    if kind in lines:
        path.with_name(path.name + ".sha256").write_text(lines[kind], errors="surrogateescape")


@pytest.fixture(scope="module")
def real_bundle(package: Path, tmp_path_factory: pytest.TempPathFactory) -> FuzzedFile:
    """The bundle of the shared package, and its hot ranges: local headers, starts of member data, the directory."""
    path = write_bundle(package, tmp_path_factory.mktemp("fuzz-real-bundle")).path
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos, start_dir = archive.infolist(), archive.start_dir
    hot = [(start_dir, len(raw))]
    for info in infos:
        data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        hot += [(info.header_offset, data_start), (data_start, min(len(raw), data_start + 64))]
    path.unlink()
    return FuzzedFile(raw, ".zip", hot)


@settings(FUZZ, max_examples=examples(8))
@given(data=st.data())
def test_mutated_real_bundles_are_refused_or_reported(real_bundle: FuzzedFile, sandbox: Sandbox,
                                                      data: st.DataObject) -> None:
    """Byte edits of the real bundle, with a sidecar that matches the edited bytes: the reader itself is tested."""
    raw = real_bundle.data
    mutated = apply_edits(raw, data.draw(byte_edits(len(raw), real_bundle.hot, max_edits=2), label="edits"))
    EXAMPLES["bundle-real-bytes"] += 1
    path = sandbox.inbox / f"{TOP}.zip"
    with _nothing_escapes(sandbox):
        path.write_bytes(mutated)
        _write_sidecar(path, mutated, "matching")
        _verify_bundle(path)


# ------------------------------------------------------------------------------ regressions: fixed bugs


def test_a_key_with_an_index_too_long_for_int_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "long-index.pth"  # int() refuses more than 4300 digits: was a raw ValueError
    torch.save({"network." + "9" * 5000 + ".0.mlp.fc1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"long-index\.pth: cannot read key 'network\.999") as info:
        read_checkpoint(path)
    _documented(info.value)


@pytest.fixture(scope="module")
def l1_timm_state() -> dict[str, torch.Tensor]:
    return timm_state_dict(realistic_model("l1"))


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")  # torch, loading a quantized tensor
@pytest.mark.parametrize(("key", "layout", "was"), [
    ("stem.conv1.weight", "sparse", "NotImplementedError from torch.isfinite"),
    ("stem.norm1.num_batches_tracked", "sparse", "RuntimeError from load_state_dict"),
    ("stem.conv1.weight", "meta", "RuntimeError: Tensor.item() cannot be called on meta tensors"),
    ("stem.conv1.weight", "quantized", "RuntimeError from load_state_dict"),
], ids=["sparse-float", "sparse-int", "meta", "quantized"])
def test_tensors_that_are_not_plain_weights_are_refused(key: str, layout: str, was: str,
                                                        l1_timm_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = {**l1_timm_state, key: LAYOUTS[layout](l1_timm_state[key])}
    path = _save_checkpoint(tmp_path / "odd.pth", state)
    with pytest.raises(CheckpointError, match=f"not plain dense weights: {re.escape(key)} is a ") as info:
        load_model(path, "l1", seed=0)
    _documented(info.value)


def test_a_complex_tensor_is_refused_not_cast(l1_timm_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    state = {**l1_timm_state, "head.weight": l1_timm_state["head.weight"].to(torch.complex64)}
    path = _save_checkpoint(tmp_path / "complex.pth", state)  # was loaded, the imaginary part silently dropped
    with pytest.raises(CheckpointError, match=r"head\.weight is a complex64 tensor"):
        load_model(path, "l1", seed=0)


@pytest.mark.parametrize(("obj", "variant"), [
    ({"x\ny": torch.zeros(1)}, None),  # "first keys: x<newline>y"
    ({torch.zeros(2, 2): {"a": torch.zeros(1)}}, None),  # "found tensor([[0., 0.],<newline> ...": a tensor key
    ("full-state-and-an-odd-key", "l1"),  # "unexpected key stages.a<newline>b (1,)"
], ids=["first-keys", "tensor-key", "unexpected-key"])
def test_checkpoint_errors_naming_odd_keys_stay_on_one_line(obj: object, variant: str | None,
                                                            l1_timm_state: dict[str, torch.Tensor],
                                                            tmp_path: Path) -> None:
    if obj == "full-state-and-an-odd-key":
        obj = {**l1_timm_state, "stages.a\nb": torch.zeros(1)}
    path = _save_checkpoint(tmp_path / "keys.pth", obj)
    with pytest.raises(CheckpointError) as info:
        load_model(path, variant, seed=0)
    _documented(info.value)  # was a message spanning lines


def _save_checkpoint(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"schema": ' + "1" * 5000 + "}"],
                         ids=["deeply-nested", "huge-integer"])
def test_manifest_json_that_python_cannot_read_is_a_verify_error(text: str, tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(text)  # was a raw RecursionError / ValueError
    with pytest.raises(VerifyError, match="unreadable manifest") as info:
        read_manifest(tmp_path)
    _documented(info.value)


def test_schema_problems_name_a_key_with_a_line_break_on_one_line(tmp_path: Path) -> None:
    problems = schema_problems({"a\rb": 1})  # was "a<CR>b: unknown key (not allowed here)", on two lines
    assert "'a\\rb': unknown key (not allowed here)" in problems
    assert not any("\r" in p or "\n" in p for p in problems)
    with pytest.raises(VerifyError) as info:
        check_manifest({"a\rb": 1}, str(tmp_path))
    _documented(info.value)


def _small_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)  # a ZipInfo: zipfile's writestr(str) fails on ""
            info.compress_type = method
            archive.writestr(info, data)
    return path.read_bytes()


def _refused(path: Path, match: str) -> None:
    before = set(path.parent.iterdir())
    with pytest.raises(VerifyError, match=match) as info:
        verify_package(path)
    _documented(info.value)
    assert set(path.parent.iterdir()) == before


@pytest.mark.parametrize("name", ["", ".", "./"])
def test_a_member_with_an_empty_path_is_refused(name: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"  # was a raw IndexError in check_members
    _small_zip(path, {f"{TOP}/manifest.json": b"{}", name: b"x"})
    _refused(path, "is an empty path")


@pytest.mark.parametrize("name", ["\r/manifest.json", f"{TOP}/\nREADME.md", f"{TOP}/\u202emd.exe"])
def test_a_member_name_with_control_characters_is_refused(name: str, tmp_path: Path) -> None:
    path = tmp_path / "control.zip"  # was extracted, then reported in messages that spanned lines
    _small_zip(path, {name: b"{}"})
    _refused(path, "control or invisible characters")


def test_a_member_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "name.zip"  # "é" sets the UTF-8 flag; c3 28 is not UTF-8: was a raw UnicodeDecodeError
    path.write_bytes(_patch_headers(_small_zip(path, {"é": b"x"}), [("name", 1, 0x28)]))
    _refused(path, "not a zip bundle")


def test_a_corrupt_deflate_stream_is_a_damaged_bundle(tmp_path: Path) -> None:
    path = tmp_path / "damaged.zip"
    raw = bytearray(_small_zip(path, {f"{TOP}/README.md": b"EfficientFormer " * 64}))
    raw[30 + len(f"{TOP}/README.md")] = 0x00  # a stored block whose lengths disagree: was a raw zlib.error
    path.write_bytes(raw)
    _refused(path, "damaged bundle: Error -3 while decompressing data")


@pytest.mark.parametrize(("method", "data", "match"), [
    (99, b"x" * 64, "That compression method is not supported"),  # was a raw NotImplementedError
    (14, b"\x09\x04\x05\x00" + b"\xff" * 60, "Invalid or unsupported options"),  # was a raw lzma.LZMAError
], ids=["unknown-method", "lzma-garbage"])
def test_a_member_that_cannot_be_decompressed_is_a_damaged_bundle(method: int, data: bytes, match: str,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "damaged.zip"
    raw = _small_zip(path, {f"{TOP}/README.md": data}, method=zipfile.ZIP_STORED)
    path.write_bytes(_patch_headers(raw, [("method", 0, method), ("local_method", 0, method)]))
    _refused(path, f"damaged bundle: {match}")


# ------------------------------------------------- regressions: bugs the fuzzing found in recipes.py and verify.py


def test_an_unknown_key_with_a_line_break_gives_a_one_line_message() -> None:
    data = tomllib.loads(SHIPPED_RECIPES["onnx.toml"].decode())
    with pytest.raises(RecipeError) as info:
        parse_recipe({**data, "a\nb": 1}, "recipe fuzz.toml")
    _documented(info.value)


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000 + "]" * 100_000, "a = " + "1" * 5000],
                         ids=["deeply-nested", "huge-integer"])
def test_a_recipe_that_python_cannot_read_is_a_recipe_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(RecipeError):
        load_recipe(path)


@pytest.fixture
def modelless(package: Path, tmp_path: Path) -> Path:
    """The shared package without its model file (verify cannot run parity, so these tests are quick)."""
    return _link_package(package, tmp_path / "package", skip=("model.onnx",))


def _with_manifest(directory: Path, package: Path, edit: Any) -> Path:
    manifest = read_manifest(package)
    edit(manifest)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    return directory


def test_verify_with_a_file_entry_that_is_not_an_object(package: Path, modelless: Path) -> None:
    # Found here as a raw AttributeError from _file_problems (entry.get on an int); verify.py has since been fixed.
    report = verify_artifact(_with_manifest(modelless, package, lambda m: m["files"].__setitem__("README.md", 0)))
    assert not report.passed


def test_verify_with_a_model_file_that_is_not_a_string(package: Path, modelless: Path) -> None:
    report = verify_artifact(_with_manifest(modelless, package, lambda m: m["target"].__setitem__("model_file", 5)))
    assert not report.passed


def test_verify_without_the_model_file_does_not_pass(package: Path, modelless: Path) -> None:
    report = verify_artifact(_with_manifest(modelless, package, lambda m: m["files"].pop("model.onnx")))
    assert not report.passed


def test_a_manifest_holding_nan_is_unreadable(package: Path, modelless: Path) -> None:
    # Found here: Python's json reads NaN, so a latency figure set to NaN passed verify.
    manifest = (package / MANIFEST_FILE).read_text()
    (modelless / MANIFEST_FILE).write_text(manifest.replace('"p90":', '"p90": NaN, "was":', 1))
    with pytest.raises(VerifyError, match="NaN is not JSON"):
        verify_artifact(modelless)
