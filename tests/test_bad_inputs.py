"""The catalogue of bad inputs given to the real ``efexport`` command line: one table per kind of input.

Every case runs the installed console script as a subprocess (``tests.helpers.run_cli``), in an empty working
directory, and asserts that the command refused the input properly:

1. the exit code is the documented one (``exporter.errors.ExitCode``, README "Exit codes"): 2 usage (a flag
   the command line itself rejects), 3 bad checkpoint, recipe or option value, 4 output exists or is not
   writable, 6 verification failed, 10 publish refused, 11 publish destination failed;
2. stderr names the problem (every fragment of the case: the file, key or flag and what is wrong with it), no
   "Traceback" appears on stdout or stderr, and stdout is empty unless ``--json`` was given; with ``--json``
   stdout is the error document (``status: error``, the exit code, the pipeline stage where there is one);
3. nothing was written: every path the case watches (the output root, the working directory, and the inputs:
   checkpoint, recipe, package, bundle, registry) is byte-for-byte as before or still absent, with no
   ``.staging-``/``.tmp``/``.replaced-``/``.partial`` leftovers, and what a malicious input tries to create
   (a file touched by unpickling, a zip member escaping its folder) does not exist.

Tables: CHECKPOINTS (``--weights`` on every command that loads weights), RECIPES and FLAGS, OUTPUTS, and
PACKAGES (given to ``verify``, ``bundle`` and ``publish``). A case that shows a bug not fixed yet is marked
``xfail(strict=True)`` with the bug as its reason: fix the bug, then remove the mark.

Cost: most cases fail within one CLI start (a few seconds for the torch import; typer's own flag errors come
before it). The expensive inputs are built once per module: checkpoint files (l1 ones are ~47 MB, deleted at
teardown), and the shared l1 ONNX package of ``tests.packages`` with its bundle and a registry holding it,
which every package case copies before changing anything.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efexport.exporter.bundle import write_bundle
from efexport.exporter.errors import ExitCode
from efexport.exporter.models.efficientformer import build_model
from efexport.exporter.publish import LocalStore, publish
from efexport.exporter.recipes import default_recipe_path
from tests.helpers import REPO, realistic_model, run_cli, timm_state_dict, upstream_state_dict
from tests.helpers_v2 import realistic_model_v2, upstream_state_dict_v2
from tests.packages import exported_package

USAGE, BAD_INPUT, OUTPUT = ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.OUTPUT_ERROR
VERIFY, REFUSED, PUBLISH_FAILED = ExitCode.VERIFY_FAILED, ExitCode.PUBLISH_REFUSED, ExitCode.PUBLISH_FAILED
PACKAGE = "efficientformer-l1-onnx-fp32"  # the shared package's name: its bundle's top folder
BUNDLE = PACKAGE + ".zip"
READ_ONLY = Path("/sys/efexport-test")  # /sys is mounted read-only: not even root can write there
LEFTOVER_MARKS = (".staging-", ".replaced-", ".tmp", ".partial", ".efexport-probe-")


# ---------------------------------------------------------------------------------------------------- the cases


@dataclass
class Given:
    """What one case runs against: paths by placeholder name, what must stay as it was, what must not appear."""

    tmp: Path
    fixtures: dict[str, Path]  # shared inputs built once per module: never change them, copy them
    paths: dict[str, Path] = field(default_factory=dict)
    watched: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)

    def use(self, name: str, path: Path) -> Path:
        """``path`` as ``{name}`` in the case's arguments and fragments; it must be the same afterwards."""
        self.paths[name] = Path(path)
        self.watched.append(Path(path))
        return Path(path)


Setup = Callable[[Given], None]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # the command line; "{name}" is a path the set-up provides ({out}: the output root)
    code: int  # the exit code expected
    says: tuple[str, ...]  # fragments stderr must contain (formatted with the paths too)
    setup: Setup | None = None  # writes the case's inputs into Given.tmp
    json: bool = False  # add --json: stdout must be the error document (verify: its report, not passed)
    stage: str | None = None  # the error document's "stage"
    needs: tuple[str, ...] = ()  # module fixtures: checkpoints, package, bundle, registry
    bug: str | None = None  # a bug not fixed yet: the case is xfail(strict=True) with this reason


def _params(table: dict[str, Case]) -> list:
    params = []
    for name, case in table.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        if "checkpoints" in case.needs:  # one xdist worker builds the checkpoint files once
            marks.append(pytest.mark.xdist_group("bad-input-checkpoints"))
        if {"package", "bundle", "registry"} & set(case.needs):  # the worker that exports the shared packages
            marks.append(pytest.mark.xdist_group("l1-packages"))
        params.append(pytest.param(case, id=name, marks=marks))
    return params


# ---------------------------------------------------------------------------------------------------- checkpoints


def weights(name: str) -> Setup:
    """A checkpoint of the ``checkpoints`` fixture (or, when it has none of that name, a path that does not exist)
    as {weights}."""
    def setup(given: Given) -> None:
        given.use("weights", given.fixtures.get(name, given.tmp / name))
        if name == "evil.pth":  # unpickling it would touch this file
            given.absent.append(given.fixtures["pwned"])
    return setup


def _ckpt(command: str, name: str, says: tuple[str, ...], *extra: str, json: bool = False,
          stage: str | None = "load") -> Case:
    out = () if command == "fold" else ("--out", "{out}")  # fold writes nothing
    return Case((command, "--weights", "{weights}", *extra, *out), BAD_INPUT, says, weights(name), json, stage,
                needs=("checkpoints",))


TRUNCATED = ("{weights}: not a readable PyTorch checkpoint (truncated or corrupt?)",)
CHECKPOINTS: dict[str, Case] = {
    # the brackets are regressions too: rich markup in the message swallowed "[load]", and a "[/x]" in the path
    # crashed the error report itself (MarkupError, exit 1, no --json document)
    "missing-path": _ckpt("onnx", "a[/x]/ckpt[l1].pth", ("[load] {weights}: no such file",), json=True),
    "a-directory": _ckpt("onnx", "directory.pth", ("{weights}: not a file",)),
    "empty-file": _ckpt("onnx", "empty.pth", ("{weights}: empty file",)),
    "truncated-pth": _ckpt("onnx", "truncated.pth", TRUNCATED),
    "truncated-safetensors": _ckpt("onnx", "truncated.safetensors", (
        "{weights}: not a readable safetensors file (truncated or corrupt?)",)),
    "random-bytes-pth": _ckpt("onnx", "random.pth", ("{weights}: not a PyTorch checkpoint",), json=True),
    "random-bytes-safetensors": _ckpt("onnx", "random.safetensors", ("{weights}: not a readable safetensors file",)),
    "l3-weights-given-as-l1": _ckpt("onnx", "l3.pth", ("does not fit EfficientFormer-l1", "it holds l3 weights",
                                                       "shape of"), "--variant", "l1"),
    # the two families: each checkpoint names its own, and a variant of the other family is refused by name
    "v2-weights-given-as-l1": _ckpt("onnx", "v2-s0.pth", ("{weights}: this is an EfficientFormerV2 checkpoint, "
                                                          "not EfficientFormer V1 (l1)", "s0, s1, s2, l"),
                                    "--variant", "l1"),
    "v1-weights-given-as-s0": _ckpt("onnx", "l3.pth", ("{weights}: this is an EfficientFormer V1 checkpoint, not "
                                                       "EfficientFormerV2 (s0)", "l1, l3, l7"), "--variant", "s0"),
    "v2-s0-weights-given-as-s1": _ckpt("onnx", "v2-s0.safetensors", (
        "does not fit EfficientFormerV2-s1", "it holds s0 weights", "shape of"), "--variant", "s1"),
    "v2-truncated-pth": _ckpt("onnx", "v2-truncated.pth", TRUNCATED),
    "v2-timm-missing-key": _ckpt("onnx", "v2-timm-missing-key.safetensors", (
        "matches no EfficientFormerV2 variant", "missing key norm.running_var")),
    "v2-upstream-extra-key": _ckpt("coreml", "v2-upstream-extra-key.pth", (
        "matches no EfficientFormerV2 variant", "unexpected key head_dist.extra_scale")),
    "nan-and-inf-in-tensors": _ckpt("onnx", "nan-inf.pth", ("{weights}: non-finite values (NaN or Inf) in "
                                                            "stem.conv1.weight, head.weight",)),
    "extra-key": _ckpt("onnx", "extra-key.pth", ("matches no EfficientFormer V1 variant",
                                                 "unexpected key head.extra_scale")),
    "missing-key": _ckpt("onnx", "missing-key.pth", ("does not fit EfficientFormer-l1", "missing key norm.weight"),
                         "--variant", "l1"),
    "malicious-pickle": _ckpt("onnx", "evil.pth", ("{weights}: refused to load", "never unpickles code")),
    # every other command that loads weights refuses the same checkpoint the same way
    "coreml-truncated-pth": _ckpt("coreml", "truncated.pth", TRUNCATED),
    "tensorrt-truncated-pth": _ckpt("tensorrt", "truncated.pth", TRUNCATED),
    "all-truncated-pth": _ckpt("all", "truncated.pth", ("onnx failed", "coreml failed", "tensorrt failed",
                                                        "coreai failed", *TRUNCATED), json=True),
    "fold-truncated-pth": _ckpt("fold", "truncated.pth", TRUNCATED, json=True, stage=None),
    "bench-truncated-pth": _ckpt("bench", "truncated.pth", TRUNCATED, stage=None),
}


class _TouchesPath:
    """Unpickling this calls ``Path.touch(marker)``: proof that code ran if the marker exists afterwards."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Every bad checkpoint once, by file name (``pwned``: the file the malicious one would create)."""
    root = tmp_path_factory.mktemp("bad-checkpoints")
    files: dict[str, Path] = {}

    def save(name: str, state: dict) -> None:
        files[name] = root / name
        if name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state.items()}, str(files[name]))
        else:
            torch.save({"model": state}, files[name])

    def cut(name: str, source: Path) -> None:  # the first half of a real file, as an interrupted download
        files[name] = root / name
        data = source.read_bytes()
        files[name].write_bytes(data[: len(data) // 2])
        source.unlink()

    l1 = realistic_model("l1")
    upstream = upstream_state_dict(l1)
    save("whole.pth", upstream)
    cut("truncated.pth", files.pop("whole.pth"))
    save("whole.safetensors", timm_state_dict(l1))
    cut("truncated.safetensors", files.pop("whole.safetensors"))
    for suffix in (".pth", ".safetensors"):
        files["random" + suffix] = root / ("random" + suffix)
        files["random" + suffix].write_bytes(random.Random(0).randbytes(4096))
    files["empty.pth"] = root / "empty.pth"
    files["empty.pth"].touch()
    files["directory.pth"] = root / "directory.pth"
    files["directory.pth"].mkdir()
    save("l3.pth", upstream_state_dict(build_model("l3")))  # the right keys and shapes are all it takes
    s0 = realistic_model_v2("s0")
    v2_upstream, v2_timm = upstream_state_dict_v2(s0), s0.state_dict()
    save("v2-s0.pth", v2_upstream)
    save("v2-s0.safetensors", v2_timm)
    save("v2-whole.pth", v2_upstream)
    cut("v2-truncated.pth", files.pop("v2-whole.pth"))
    save("v2-timm-missing-key.safetensors", {k: v for k, v in v2_timm.items() if k != "norm.running_var"})
    save("v2-upstream-extra-key.pth", v2_upstream | {"dist_head.extra_scale": torch.ones(4)})
    stem, head = upstream["patch_embed.0.weight"].clone(), upstream["head.weight"].clone()
    stem[0, 0, 0, 0], head[3, 7] = float("nan"), float("-inf")
    save("nan-inf.pth", upstream | {"patch_embed.0.weight": stem, "head.weight": head})
    save("extra-key.pth", upstream | {"head.extra_scale": torch.ones(4)})
    save("missing-key.pth", {k: v for k, v in upstream.items() if k != "norm.weight"})
    files["pwned"] = root / "pwned"
    files["evil.pth"] = root / "evil.pth"  # no weights needed: the refusal comes before any tensor is read
    torch.save({"model": {"head.weight": torch.zeros(2)}, "hook": _TouchesPath(files["pwned"])}, files["evil.pth"])
    assert not files["pwned"].exists()
    yield files
    for path in files.values():  # ~400 MB, in pytest's retained tmp dirs otherwise
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


@pytest.mark.parametrize("case", _params(CHECKPOINTS))
def test_bad_checkpoint(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(case, request, tmp_path)


# ---------------------------------------------------------------------------------------------------- recipes


def recipe(target: str, *edits: tuple[str, str]) -> Setup:
    """The shipped recipe of ``target`` with text replacements (each must apply), written to {recipe}."""
    def setup(given: Given) -> None:
        text = default_recipe_path(target).read_text()
        for old, new in edits:
            assert old in text, f"{old!r} is not in the shipped {target} recipe any more"
            text = text.replace(old, new, 1)
        (given.tmp / "recipe.toml").write_text(text)
        given.use("recipe", given.tmp / "recipe.toml")
    return setup


def recipe_file(text: str | None = None, shipped: str | None = None) -> Setup:
    """{recipe}: a file holding ``text``, a shipped recipe as it is, or (neither) a path that does not exist."""
    def setup(given: Given) -> None:
        path = default_recipe_path(shipped) if shipped else given.tmp / "recipe.toml"
        if text is not None:
            path.write_text(text)
        given.use("recipe", path)
    return setup


def _recipe(target: str, setup: Setup, *says: str, json: bool = False) -> Case:
    return Case((target, "--variant", "l1", "--recipe", "{recipe}", "--out", "{out}"), BAD_INPUT,
                ("{recipe}", *says), setup, json)


def _trt_profile(profile: str) -> Setup:
    return recipe("tensorrt", ("profile = [1, 8, 64]", f"profile = {profile}"))


RECIPES: dict[str, Case] = {
    "unknown-key": _recipe("onnx", recipe("onnx", ("opset = 17", "opset = 17\nopst = 1")),
                           "export.opst: unknown key", json=True),
    "wrong-type": _recipe("onnx", recipe("onnx", ("opset = 17", 'opset = "17"')),
                          "export.opset: Input should be a valid integer"),
    "opset-too-low": _recipe("onnx", recipe("onnx", ("opset = 17", "opset = 9")),
                             "export.opset: Input should be greater than or equal to 14"),
    "opset-too-high": _recipe("onnx", recipe("onnx", ("opset = 17", "opset = 99")),
                              "export.opset: Input should be less than or equal to 20"),
    "negative-tolerance": _recipe("onnx", recipe("onnx", ("max_abs = 1e-4", "max_abs = -1e-4")),
                                  "parity.tolerances.fp32.max_abs: Input should be greater than 0"),
    "zero-fold-tolerance": _recipe("onnx", recipe("onnx", ("max_abs = 1e-5", "max_abs = 0.0")),
                                   "fold.max_abs: Input should be greater than 0"),
    "batch-size-zero": _recipe("onnx", recipe("onnx", ("batch_size = 1", "batch_size = 0")),
                               "latency.batch_size: Input should be greater than or equal to 1"),
    "latency-max-windows-below-stable-windows": _recipe("onnx", recipe("onnx", ("max_windows = 12", "max_windows = 2")),
                                                        "latency: max_windows (2) must be at least stable_windows"),
    "coreml-deployment-target-unknown": _recipe("coreml", recipe("coreml", ('"iOS16"', '"iOS99"')),
                                                "coreml.minimum_deployment_target: Input should be 'iOS15'"),
    # an ML Program needs iOS 15 or later
    "coreml-deployment-target-too-old": _recipe("coreml", recipe("coreml", ('"iOS16"', '"iOS14"')),
                                                "coreml.minimum_deployment_target: Input should be 'iOS15'"),
    "coreml-dynamic-batch": _recipe("coreml", recipe("coreml", ("image_size = 224", "image_size = 224\n"
                                                                                    "dynamic_batch = true")),
                                    "export.dynamic_batch: Core ML packages here have a fixed batch of 1"),
    "tensorrt-profile-min-above-opt": _recipe("tensorrt", _trt_profile("[16, 8, 64]"),
                                              "tensorrt.profile: profile must be [min, opt, max]", "[16, 8, 64]"),
    "tensorrt-profile-opt-above-max": _recipe("tensorrt", _trt_profile("[1, 128, 64]"),
                                              "tensorrt.profile: profile must be [min, opt, max]", "[1, 128, 64]"),
    "tensorrt-static-batch-with-a-profile": _recipe("tensorrt", recipe("tensorrt", ("dynamic_batch = true",
                                                                                   "dynamic_batch = false")),
                                                    "tensorrt.profile: a static-batch export has batch 1 only"),
    "not-toml": _recipe("onnx", recipe_file("target = [unclosed\n"), "not valid TOML"),
    "coreml-recipe-given-to-onnx": _recipe("onnx", recipe_file(shipped="coreml"),
                                           "is for target 'coreml', not 'onnx'"),
    "missing-recipe-file": _recipe("onnx", recipe_file(), "no such file"),
}


@pytest.mark.parametrize("case", _params(RECIPES))
def test_bad_recipe(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(case, request, tmp_path)


# ---------------------------------------------------------------------------------------------------- flags


def some_directory(given: Given) -> None:  # an existing source, so publish gets as far as checking its flags
    given.use("dir", given.tmp / "dir").mkdir()


def _onnx(*args: str) -> tuple[str, ...]:
    return ("onnx", "--variant", "l1", *args, "--out", "{out}")


FLAGS: dict[str, Case] = {
    "unknown-option": Case(_onnx("--opsett", "17"), USAGE, ("No such option: --opsett",)),
    "unknown-variant": Case(("onnx", "--variant", "l9", "--out", "{out}"), USAGE, ("'l9' is not one of",)),
    "no-variant-and-no-weights": Case(("onnx", "--out", "{out}"), BAD_INPUT,
                                      ("--variant is required without --weights",), json=True, stage="load"),
    "opset-too-low": Case(_onnx("--opset", "9"), BAD_INPUT, ("export.opset: Input should be greater than or equal "
                                                             "to 14",), json=True),
    "opset-20-keeps-erf-gelu": Case(_onnx("--opset", "20"), BAD_INPUT, ("erf-gelu is for opsets below 20",
                                                                        "--no-pass erf-gelu")),
    "image-size-off-the-7x7-grid": Case(_onnx("--image-size", "256"), BAD_INPUT, ("export.image_size",
                                                                                   "7x7 token grid")),
    "seed-not-a-number": Case(_onnx("--seed", "abc"), USAGE, ("Invalid value for '--seed'",)),
    # regression: a seed past torch.Generator's range was exit 7 ([load] ValueError: Overflow...) here, and a
    # traceback (exit 1) from fold and bench
    "seed-too-large": Case(_onnx("--seed", str(2**64)), USAGE, ("Invalid value for '--seed'",)),
    "fold-seed-too-large": Case(("fold", "--variant", "l1", "--seed", str(10**23)), USAGE,
                                ("Invalid value for '--seed'",)),
    "tensorrt-batch-profile-not-numbers": Case(("tensorrt", "--variant", "l1", "--batch-profile", "one,8,64", "--out",
                                                "{out}"), USAGE, ("--batch-profile one,8,64: give three batch sizes",),
                                               json=True),
    "tensorrt-batch-profile-min-above-opt": Case(("tensorrt", "--variant", "l1", "--batch-profile", "16,8,64",
                                                  "--out", "{out}"), BAD_INPUT, ("tensorrt.profile", "[16, 8, 64]")),
    "all-unknown-target": Case(("all", "--variant", "l1", "--targets", "onnx,tflite", "--out", "{out}"), USAGE,
                               ("--targets onnx,tflite: choose from onnx, coreml, tensorrt, coreai",), json=True),
    # regression: the second onnx export failed on the first one's package (exit 4, a package written)
    "all-target-given-twice": Case(("all", "--variant", "l1", "--targets", "onnx,coreml,onnx", "--out", "{out}"),
                                   USAGE, ("--targets onnx,coreml,onnx: onnx given twice",)),
    "bench-batches-not-numbers": Case(("bench", "--variant", "l1", "--batches", "1,x", "--out", "{out}"), USAGE,
                                      ("--batches 1,x: give comma-separated integers",)),
    # regression: no upper bound, so the sweep would build a 60 GB input after minutes of timing
    "bench-batch-huge": Case(("bench", "--variant", "l1", "--batches", "1,100000", "--out", "{out}"), USAGE,
                             ("--batches 1,100000: batch sizes must be at most 1024",)),
    "bench-threads-zero": Case(("bench", "--variant", "l1", "--threads", "0", "--out", "{out}"), USAGE,
                               ("Invalid value for '--threads'",)),
    # Core AI: the precisions it exports, and labels that must fit the head (refused before any work, nothing written)
    "coreai-unsupported-precision": Case(("coreai", "--variant", "l1", "--precision", "bf16", "--out", "{out}"),
                                         USAGE, ("Invalid value for '--precision'", "'bf16' is not one of 'fp32', "
                                                                                     "'fp16'")),
    "coreai-labels-of-the-wrong-length": Case(("coreai", "--variant", "l1", "--labels", "{labels}", "--out",
                                               "{out}"), BAD_INPUT,
                                              ("labels {labels}: 3 labels, but the model has 1000 classes",),
                                              lambda given: given.use("labels", given.tmp / "labels.txt")
                                              .write_text("cat\ndog\nbird\n"), json=True),
    "coreai-dynamic-batch": _recipe("coreai", recipe("coreai", ("image_size = 224", "image_size = 224\n"
                                                                                    "dynamic_batch = true")),
                                    "export.dynamic_batch: Core AI assets here have a fixed batch of 1"),
    "publish-unsupported-destination": Case(("publish", "{dir}", "--to", "gs://bucket/models"), USAGE,
                                            ("--to gs://bucket/models: gs:// destinations are not supported",),
                                            some_directory),
}


@pytest.mark.parametrize("case", _params(FLAGS))
def test_bad_flag(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(case, request, tmp_path)


# ---------------------------------------------------------------------------------------------------- outputs


def read_only(name: str) -> Setup:
    """{name} under a directory not even root can write (/sys, a read-only mount here)."""
    def setup(given: Given) -> None:
        try:
            probe = tempfile.mkdtemp(dir=READ_ONLY.parent)
        except OSError:
            given.use(name, READ_ONLY / name)
            return
        Path(probe).rmdir()
        pytest.skip(f"{READ_ONLY.parent} is writable on this machine: no read-only place to write to")
    return setup


def a_file(name: str) -> Setup:
    """{name} (and {blocker}): a regular file where a directory is wanted."""
    def setup(given: Given) -> None:
        blocker = given.tmp / "blocker"
        blocker.write_text("a file, not a directory\n")
        given.paths[name] = given.use("blocker", blocker)
    return setup


def _copy_package(given: Given, into: Path | None = None) -> Path:
    return Path(shutil.copytree(given.fixtures["package"], into or given.tmp / "copies" / "onnx-fp32"))


def package(change: Callable[[Path], None] | None = None) -> Setup:
    """{pkg}: a copy of the shared package, changed by ``change``."""
    def setup(given: Given) -> None:
        copy = _copy_package(given)
        if change:
            change(copy)
        given.use("pkg", copy)
    return setup


def both(*setups: Setup) -> Setup:
    def setup(given: Given) -> None:
        for each in setups:
            each(given)
    return setup


def existing_artifact(given: Given) -> None:
    """{out} already holds the l1 ONNX package."""
    _copy_package(given, given.tmp / "out" / "efficientformer-l1" / "onnx-fp32")


def _flip_a_byte(name: str) -> Callable[[Path], None]:
    def change(package_dir: Path) -> None:
        data = bytearray((package_dir / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (package_dir / name).write_bytes(bytes(data))
    return change


PUBLISH = ("--version", "1.0.0", "--allow-random-weights")  # past the gates: refused for the input alone
OUTPUTS: dict[str, Case] = {
    "out-is-a-file": Case(("onnx", "--variant", "l1", "--out", "{out}"), OUTPUT, (
        "cannot write to {out}: {out} is not a directory",), a_file("out"), json=True),
    "out-read-only": Case(("onnx", "--variant", "l1", "--out", "{out}"), OUTPUT, ("cannot write to {out}",
                                                                                 "is not writable"), read_only("out")),
    "all-out-read-only": Case(("all", "--variant", "l1", "--targets", "onnx,coreml", "--out", "{out}"), OUTPUT, (
        "onnx failed", "coreml failed", "cannot write to {out}"), read_only("out")),
    "bench-report-dir-read-only": Case(("bench", "--variant", "l1", "--report-dir", "{reports}", "--out", "{out}"),
                                       OUTPUT, ("cannot write to {reports}",), read_only("reports")),
    # regression: every package was exported and written, then the first bundle failed (exit 4)
    "all-bundle-dir-read-only": Case(("all", "--variant", "l1", "--bundle-dir", "{bundles}", "--out", "{out}"),
                                     OUTPUT, ("cannot write to {bundles}",), read_only("bundles"), json=True),
    "all-bundle-dir-is-a-file": Case(("all", "--variant", "l1", "--bundle-dir", "{bundles}", "--out", "{out}"),
                                     OUTPUT, ("cannot write to {bundles}: {bundles} is not a directory",),
                                     a_file("bundles")),
    "existing-artifact-without-force": Case(("onnx", "--variant", "l1", "--out", "{out}"), OUTPUT, (
        "{out}/efficientformer-l1/onnx-fp32 already exists; pass --force to replace it",), existing_artifact,
        json=True, needs=("package",)),
    # regression: an unwritable --report was a traceback (exit 1) after the verification
    "verify-report-read-only": Case(("verify", "{pkg}", "--report", "{report}"), OUTPUT, (
        "--report {report}: cannot write it",), both(package(), read_only("report")), needs=("package",)),
    "bundle-out-read-only": Case(("bundle", "{pkg}", "--out", "{out}"), OUTPUT, ("cannot write the bundle to {out}",),
                                 both(package(), read_only("out")), needs=("package",)),
    # regression: os.access let root through, so this failed only after verifying (and a package that does not
    # verify was refused with 10 instead): the destination is checked first, as publish intends
    "publish-to-read-only": Case(("publish", "{pkg}", "--to", "{registry}", *PUBLISH), PUBLISH_FAILED, (
        "{registry}: cannot create or write the registry directory",),
        both(package(_flip_a_byte("model.onnx")), read_only("registry")), needs=("package",)),
    "publish-to-a-file": Case(("publish", "{pkg}", "--to", "{blocker}", *PUBLISH), USAGE, (
        "--to {blocker}: exists and is not a directory",), both(package(), a_file("registry")), needs=("package",)),
}


@pytest.mark.parametrize("case", _params(OUTPUTS))
def test_bad_output(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(case, request, tmp_path)


@pytest.mark.xdist_group("l1-packages")
def test_force_replaces_an_existing_artifact(package_dir: Path, tmp_path: Path) -> None:
    """The counterpart of existing-artifact-without-force: with --force the new package replaces the old one
    whole (a file only the old one had is gone), verifies, and nothing else is left beside it."""
    out = tmp_path / "out"
    final = out / "efficientformer-l1" / "onnx-fp32"
    shutil.copytree(package_dir, final)
    stale = final / "stale.txt"
    stale.write_text("left from an older export\n")
    fast = tmp_path / "fast.toml"  # the shortest latency run the recipe allows: the test is about the output
    fast.write_text(default_recipe_path("onnx").read_text().replace("warmup_runs = 10", "warmup_runs = 1")
                    .replace("window_runs = 20", "window_runs = 3").replace("max_windows = 12", "max_windows = 3"))
    result = run_cli("onnx", "--variant", "l1", "--out", out, "--recipe", fast, "--force", "--quiet")
    assert result.returncode == 0, _explain(result)
    assert result.stderr == "" and result.stdout == ""  # --quiet
    assert _tree(out) is not None and sorted(_tree(out)) == [
        "efficientformer-l1", "efficientformer-l1/onnx-fp32", "efficientformer-l1/onnx-fp32/README.md",
        "efficientformer-l1/onnx-fp32/manifest.json", "efficientformer-l1/onnx-fp32/model.onnx",
        "efficientformer-l1/onnx-fp32/reference_io.npz"]  # no stale file, staging or retired copy
    verified = run_cli("verify", final, "--quiet")
    assert verified.returncode == 0, _explain(verified)


# ---------------------------------------------------------------------------------------------------- packages


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(package_dir: Path) -> None:
        path = package_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest, indent=2) + "\n")
    return change


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda package_dir: (package_dir / name).write_text(text)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda package_dir: (package_dir / name).unlink()


TAMPERED_MODEL = _flip_a_byte("model.onnx")
TAMPERED_CARD = _write("README.md", "# EfficientFormar-l1\n\nEdited by hand.\n")
VARIANT_NOT_A_NAME = _edit_manifest(lambda m: m["model"].__setitem__("variant", 5))
NO_PARITY_BLOCK = _edit_manifest(lambda m: m.pop("parity"))
FILE_ENTRY_A_STRING = _edit_manifest(lambda m: m["files"].__setitem__("model.onnx", m["files"]["model.onnx"]["sha256"]))
NOT_JSON = _write("manifest.json", '{"schema": "efexport.manifest/3", not json\n')


def no_package(given: Given) -> None:
    given.use("pkg", given.tmp / "copies" / "empty").mkdir(parents=True)


def missing(name: str) -> Setup:
    def setup(given: Given) -> None:
        given.use("pkg", given.tmp / name)
    return setup


def _with_member(source: Path, target: Path, member: str, data: bytes) -> None:
    """A copy of a bundle with one more member (appended: the others are not recompressed)."""
    shutil.copyfile(source, target)
    with zipfile.ZipFile(target, "a") as archive:
        archive.writestr(member, data)


def escaping_bundle(how: str) -> Setup:
    """{pkg}: the shared bundle plus a member escaping its folder (``..`` segments or an absolute path). Where
    the member would land if extracted must not exist afterwards."""
    def setup(given: Given) -> None:
        name = f"efexport-zip-slip-{uuid.uuid4().hex}.txt"
        member = f"{PACKAGE}/../../{name}" if how == "dotdot" else f"{tempfile.gettempdir()}/{name}"
        given.tmp.joinpath("copies").mkdir(exist_ok=True)
        _with_member(given.fixtures["bundle"], given.tmp / "copies" / BUNDLE, member, b"escaped\n")
        given.use("pkg", given.tmp / "copies" / BUNDLE)
        # extracted into a temporary folder (../.. from there: the temporary directory), or the working directory
        given.absent += [Path(tempfile.gettempdir()) / name, Path("/") / name, given.tmp / name,
                         given.tmp / "cwd" / name, REPO / name, REPO.parent / name]
    return setup


def bundle_copy(cut: bool = False, sidecar: str | None = None) -> Setup:
    """{pkg}: a copy of the shared bundle, cut to its first half, or with a ``.sha256`` sidecar saying ``sidecar``."""
    def setup(given: Given) -> None:
        copy = given.tmp / "copies" / BUNDLE
        copy.parent.mkdir(exist_ok=True)
        data = given.fixtures["bundle"].read_bytes()
        copy.write_bytes(data[: len(data) // 2] if cut else data)
        given.use("pkg", copy)
        if sidecar is not None:
            given.use("sidecar", copy.with_name(BUNDLE + ".sha256")).write_text(sidecar)
    return setup


def to_registry(setup_package: Setup) -> Setup:
    """The package set-up, and {registry}: a copy of a registry that already lists the package as 0.9.0."""
    def setup(given: Given) -> None:
        setup_package(given)
        given.use("registry", Path(shutil.copytree(given.fixtures["registry"], given.tmp / "copies" / "registry")))
    return setup


def _verify(setup: Setup, *says: str, bug: str | None = None, json: bool = False) -> Case:
    return Case(("verify", "{pkg}"), VERIFY, says, setup, json, needs=("package", "bundle"), bug=bug)


def _bundle(setup: Setup, *says: str, code: int = VERIFY, bug: str | None = None, json: bool = False) -> Case:
    return Case(("bundle", "{pkg}", "--out", "{out}"), code, says, setup, json, needs=("package", "bundle"), bug=bug)


def _publish(setup: Setup, *says: str, flags: tuple[str, ...] = PUBLISH, bug: str | None = None,
             json: bool = False) -> Case:
    return Case(("publish", "{pkg}", "--to", "{registry}", *flags), REFUSED, says, to_registry(setup), json,
                needs=("package", "bundle", "registry"), bug=bug)


ZIP_SLIP = "refused before extracting anything"
PACKAGES: dict[str, Case] = {
    "verify-tampered-model": _verify(package(TAMPERED_MODEL), "model.onnx: sha256 differs from the manifest",
                                     json=True),
    "verify-tampered-card": _verify(package(TAMPERED_CARD), "README.md: sha256 differs from the manifest"),
    "verify-missing-file": _verify(package(_remove("reference_io.npz")), "missing file reference_io.npz"),
    "verify-unexpected-file": _verify(package(_write("notes.txt", "mine\n")), "unexpected file notes.txt (not in "
                                                                              "the manifest)"),
    "verify-manifest-wrong-type": _verify(package(VARIANT_NOT_A_NAME), "manifest: model/variant: 5 is not one of"),
    "verify-manifest-missing-key": _verify(package(NO_PARITY_BLOCK), "manifest: parity: required key is missing"),
    # regression: a files entry that is not an object was an AttributeError traceback (exit 1)
    "verify-manifest-file-entry-not-an-object": _verify(package(FILE_ENTRY_A_STRING), "files/model.onnx"),
    "verify-manifest-not-json": _verify(package(NOT_JSON), "{pkg}/manifest.json: unreadable manifest"),
    "verify-directory-that-is-no-package": _verify(no_package, "{pkg}: no manifest.json; not an efexport artifact",
                                                   json=True),
    # regression: a path that does not exist was called "not a directory"
    "verify-missing-path": _verify(missing("no-such-package"), "{pkg}: no such package directory or bundle"),
    "verify-bundle-member-with-dotdot": _verify(escaping_bundle("dotdot"), ZIP_SLIP, "'..' segment"),
    "verify-bundle-member-absolute": _verify(escaping_bundle("absolute"), ZIP_SLIP, "an absolute or non-POSIX path"),
    "verify-truncated-bundle": _verify(bundle_copy(cut=True), "{pkg}: not a zip bundle"),
    "verify-bundle-sidecar-mismatch": _verify(bundle_copy(sidecar=f"{'0' * 64}  {BUNDLE}\n"),
                                              f"{BUNDLE}: sha256 differs from {BUNDLE}.sha256"),
    "bundle-tampered-card": _bundle(package(TAMPERED_CARD), "{pkg} does not verify",
                                    "README.md: sha256 differs from the manifest", json=True),
    "bundle-directory-that-is-no-package": _bundle(no_package, "{pkg}: no manifest.json"),
    # regression: a bundle was verified, then refused with a confusing "manifest.json: Not a directory" (exit 6)
    "bundle-given-a-bundle": _bundle(bundle_copy(), "{pkg} is a bundle already", code=USAGE),
    "publish-tampered-model": _publish(package(TAMPERED_MODEL), "{pkg}: does not verify",
                                       "model.onnx: sha256 differs from the manifest", json=True),
    # regression: without --version the default came from manifest versions.efexport: a traceback (exit 1)
    "publish-manifest-versions-not-an-object": _publish(
        package(_edit_manifest(lambda m: m.__setitem__("versions", "1.0"))), "{pkg}: does not verify",
        "versions/efexport", flags=("--allow-random-weights",)),
    "publish-directory-that-is-no-package": _publish(no_package, "{pkg}: no manifest.json"),
    # regression: exit 2 here, while a directory without a package was 10 (and verify, bundle: 6)
    "publish-missing-path": _publish(missing("no-such-package"), "{pkg}: no such package directory or bundle"),
    "publish-bundle-member-with-dotdot": _publish(escaping_bundle("dotdot"), ZIP_SLIP, "'..' segment"),
    "publish-random-init-without-the-flag": _publish(package(), "random-init weights (seed 0)",
                                                     "--allow-random-weights", flags=("--version", "1.0.0")),
}


@pytest.mark.parametrize("case", _params(PACKAGES))
def test_bad_package(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(case, request, tmp_path)


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared l1 ONNX package (tests.packages): copy it before changing anything."""
    return exported_package("onnx", tmp_path_factory)[0]


@pytest.fixture(scope="module")
def bundle_file(package_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(package_dir, tmp_path_factory.mktemp("bad-input-bundle")).path


@pytest.fixture(scope="module")
def registry_dir(bundle_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry that lists the shared package as version 0.9.0: what a refused publish must leave as it was."""
    root = tmp_path_factory.mktemp("bad-input-registry") / "registry"
    publish(bundle_file, LocalStore(root), "0.9.0", allow_random_weights=True)
    return root


# ---------------------------------------------------------------------------------------------------- running a case


FIXTURES = {"checkpoints": "checkpoints", "package": "package_dir", "bundle": "bundle_file",
            "registry": "registry_dir"}


def _tree(root: Path) -> dict[str, str] | None:
    """What is at ``root``: None when nothing; else every file's sha256 and every directory, by relative path."""
    if not root.exists() and not root.is_symlink():
        return None
    if not root.is_dir():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {p.relative_to(root).as_posix(): "directory" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def snapshot(paths: list[Path]) -> Callable[[], None]:
    """Record ``paths`` now; the returned check asserts each is still exactly as it was (or still absent), with
    no staging, temporary or retired leftovers."""
    before = {path: _tree(path) for path in dict.fromkeys(paths)}

    def assert_unchanged() -> None:
        for path, tree in before.items():
            after = _tree(path)
            leftovers = [name for name in after or {} if any(mark in name for mark in LEFTOVER_MARKS)]
            assert not leftovers, f"{path}: leftovers {leftovers}"
            if after != tree:
                changed = sorted(k for k in set(tree or {}) | set(after or {}) if (tree or {}).get(k) !=
                                 (after or {}).get(k))
                pytest.fail(f"{path} changed: {'created' if tree is None else 'removed' if after is None else changed}")
    return assert_unchanged


def _explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def _flat(text: str) -> str:
    """Console text with rich's line wrapping and typer's error box undone, for fragment matching."""
    return " ".join(text.replace("│", " ").split())


def _assert_json_error(case: Case, result: subprocess.CompletedProcess, flat_stderr: str) -> None:
    document = json.loads(result.stdout)
    if "targets" in document:  # efexport all: a row per target, each failed on the same input
        assert document["status"] == "failed" and document["targets"], document
        for row in document["targets"]:
            assert (row["status"], row["exit_code"], row["stage"]) == ("failed", case.code, case.stage), row
    elif "problems" in document:  # verify prints its report, passed or not
        assert document["passed"] is False and document["problems"], document
    else:
        assert document == {"status": "error", "stage": case.stage, "error": document["error"],
                            "exit_code": case.code}
        assert _flat(document["error"]) in flat_stderr  # the same message as on the console


def _run(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fixtures: dict[str, Path] = {}
    for need in case.needs:
        value = request.getfixturevalue(FIXTURES[need])
        fixtures.update(value if isinstance(value, dict) else {need: value})
    given = Given(tmp_path, fixtures)
    cwd = given.use("cwd", tmp_path / "cwd")  # relative defaults (artifacts/) would land here
    cwd.mkdir()
    if case.setup:
        case.setup(given)
    given.paths.setdefault("out", tmp_path / "out")
    given.watched.append(given.paths["out"])
    unchanged = snapshot(given.watched)
    paths = {name: str(path) for name, path in given.paths.items()}

    result = run_cli(*[arg.format(**paths) for arg in case.args], *(["--json"] if case.json else []), cwd=cwd)
    try:
        assert result.returncode == case.code, _explain(result)
        assert "Traceback" not in result.stdout + result.stderr, _explain(result)
        flat = _flat(result.stderr)
        for fragment in case.says:
            assert _flat(fragment.format(**paths)) in flat, f"{fragment!r} not said\n{_explain(result)}"
        if case.json:
            _assert_json_error(case, result, flat)
        else:
            assert result.stdout == "", _explain(result)
        unchanged()
        for path in given.absent:
            assert not path.exists(), f"{path} exists: the bad input did more than fail"
    finally:
        shutil.rmtree(tmp_path / "copies", ignore_errors=True)  # ~50 MB a package: not for pytest's retained dirs
