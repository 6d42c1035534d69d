"""``efexport onnx --weights`` end to end, through the real console entry point."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from exporter.errors import ExitCode
from exporter.models import build_model
from tests.helpers import realistic_model, run_cli, timm_state_dict, upstream_state_dict

ARTIFACT = Path("efficientformer-l1") / "onnx-fp32"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("checkpoints")
    l1 = realistic_model("l1")
    files = {
        "upstream": root / "efficientformer_l1_300d.pth",
        "timm": root / "efficientformer_l1.safetensors",
        "l3": root / "efficientformer_l3_300d.pth",
        "truncated": root / "truncated.pth",
        "not-a-checkpoint": root / "notes.pth",
    }
    torch.save({"model": upstream_state_dict(l1), "epoch": 299}, files["upstream"])
    save_file({k: v.contiguous() for k, v in timm_state_dict(l1).items()}, str(files["timm"]))
    # l3 only needs the right keys and shapes to be refused: default init, no realistic weights
    torch.save({"model": upstream_state_dict(build_model("l3"))}, files["l3"])
    data = files["upstream"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not-a-checkpoint"].write_text("these are not the weights you are looking for\n")
    yield files
    for path in files.values():  # ~230 MB, in pytest's retained tmp dirs otherwise
        path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _explain(result) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def _assert_nothing_written(out: Path) -> None:
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert written == [], f"a refused export left {written} under --out"


def _assert_exported(out: Path, result, weights: Path, layout: str, file_format: str) -> dict:
    assert result.returncode == ExitCode.OK, _explain(result)
    manifest = json.loads((out / ARTIFACT / "manifest.json").read_text())
    assert manifest["model"]["variant"] == "l1"
    assert manifest["weights"] == {"source": "checkpoint", "file": weights.name, "sha256": _sha256(weights),
                                   "format": file_format, "layout": layout}
    assert sorted(p.name for p in out.iterdir()) == ["efficientformer-l1"]
    assert sorted(p.name for p in (out / "efficientformer-l1").iterdir()) == ["onnx-fp32"], "staging dir left over"
    assert (out / ARTIFACT / "model.onnx").is_file()
    return manifest


def test_upstream_pth_without_variant_exports_l1(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("onnx", "--weights", checkpoints["upstream"], "--out", out)
    _assert_exported(out, result, checkpoints["upstream"], "upstream", "pth")


def test_timm_safetensors_without_variant_exports_l1(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("onnx", "--weights", checkpoints["timm"], "--out", out, "--json")
    manifest = _assert_exported(out, result, checkpoints["timm"], "timm", "safetensors")
    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    assert report["variant"] == "l1"
    assert report["weights"] == manifest["weights"]
    assert Path(report["artifact"]).resolve() == (out / ARTIFACT).resolve()


# name -> (arguments given --out, what stderr must say); {name} is the path of checkpoints[name]
BAD_INPUTS = {
    "variant-mismatch": (["--weights", "{l3}", "--variant", "l1"], ["EfficientFormer-l1", "holds l3 weights",
                                                                    "shape of"]),
    "truncated": (["--weights", "{truncated}"], ["truncated or corrupt", "truncated.pth"]),
    "not-a-checkpoint": (["--weights", "{not-a-checkpoint}"], ["PyTorch checkpoint", "notes.pth"]),
    "missing": (["--weights", "{missing}"], ["no such file", "missing.pth"]),
    "no-weights-no-variant": ([], ["--variant is required"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_3_and_writes_nothing(case: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    args, expected = BAD_INPUTS[case]
    paths = {**{k: str(v) for k, v in checkpoints.items()}, "missing": str(tmp_path / "missing.pth")}
    out = tmp_path / "out"
    as_json = case == "not-a-checkpoint"
    result = run_cli("onnx", *[a.format(**paths) for a in args], "--out", out, *(["--json"] if as_json else []))
    assert result.returncode == ExitCode.BAD_INPUT == 3, _explain(result)
    for fragment in expected:
        assert fragment in result.stderr, _explain(result)
    assert "Traceback" not in result.stderr
    _assert_nothing_written(out)
    if as_json:
        report = json.loads(result.stdout)
        assert report["status"] == "error"
        assert report["exit_code"] == 3
        assert report["stage"] == "load"
        assert "PyTorch checkpoint" in report["error"]
    else:
        assert result.stdout.strip() == ""


# regression: the error used to go through rich markup unescaped, swallowing "[load]" and any [..] in a path
def test_error_message_keeps_square_brackets(tmp_path: Path) -> None:
    weights = tmp_path / "ckpt[l1].pth"
    result = run_cli("onnx", "--weights", weights, "--out", tmp_path / "out")
    assert result.returncode == ExitCode.BAD_INPUT, _explain(result)
    assert str(weights) in result.stderr, _explain(result)
    assert "[load]" in result.stderr, _explain(result)


# regression: a "[/x]" in the message made rich raise MarkupError: a traceback, exit 1 and no --json output
def test_error_message_with_closing_tag_lookalike_does_not_crash(tmp_path: Path) -> None:
    weights = tmp_path / "a[" / "x].pth"  # the path contains "[/x]"
    result = run_cli("onnx", "--weights", weights, "--out", tmp_path / "out", "--json")
    assert result.returncode == ExitCode.BAD_INPUT, _explain(result)
    assert json.loads(result.stdout)["exit_code"] == 3
