"""``efexport onnx --weights`` end to end, through the real console entry point.

Checkpoints that must be refused (truncated, another variant, not a checkpoint, missing...) are cases of the bad-input
catalogue, tests/test_bad_inputs.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efexport.exporter.errors import ExitCode
from tests.helpers import realistic_model, run_cli, timm_state_dict, upstream_state_dict

ARTIFACT = Path("efficientformer-l1") / "onnx-fp32"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("checkpoints")
    l1 = realistic_model("l1")
    files = {
        "upstream": root / "efficientformer_l1_300d.pth",
        "timm": root / "efficientformer_l1.safetensors",
    }
    torch.save({"model": upstream_state_dict(l1), "epoch": 299}, files["upstream"])
    save_file({k: v.contiguous() for k, v in timm_state_dict(l1).items()}, str(files["timm"]))
    yield files
    for path in files.values():  # ~95 MB, in pytest's retained tmp dirs otherwise
        path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _explain(result) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


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
