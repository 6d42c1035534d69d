"""``efexport all``: every target of one variant, carrying on past a failing target, with bundles and a summary."""

from __future__ import annotations

import json
from pathlib import Path

from exporter.verify import verify_package
from tests.helpers import run_cli


def test_all_carries_on_past_a_failing_target_and_reports_it(tmp_path: Path) -> None:
    out, bundles = tmp_path / "out", tmp_path / "bundles"
    taken = out / "efficientformer-l1" / "coreml-fp16"
    taken.mkdir(parents=True)  # an existing package without --force: the Core ML target must fail, alone
    (taken / "keep.txt").write_text("not ours")
    result = run_cli("all", "--variant", "l1", "--out", str(out), "--bundle-dir", str(bundles), "--json")
    assert result.returncode == 4, result.stderr  # the first failure's code: output exists
    summary = json.loads(result.stdout)
    rows = {row["target"]: row for row in summary["targets"]}
    assert summary["status"] == "failed" and list(rows) == ["onnx", "coreml", "tensorrt"]
    assert rows["onnx"]["status"] == "ok" and rows["tensorrt"]["status"] == "no-engine"
    assert rows["coreml"]["status"] == "failed" and rows["coreml"]["exit_code"] == 4
    assert "already exists" in rows["coreml"]["error"] and "coreml failed" in result.stderr
    assert (taken / "keep.txt").read_text() == "not ours" and sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    written = sorted(p.name for p in bundles.iterdir())
    assert written == ["efficientformer-l1-onnx-fp32.zip", "efficientformer-l1-onnx-fp32.zip.sha256",
                       "efficientformer-l1-tensorrt-fp16.zip", "efficientformer-l1-tensorrt-fp16.zip.sha256"]
    for row in (rows["onnx"], rows["tensorrt"]):
        assert Path(row["bundle"]["path"]).is_file()
        assert verify_package(Path(row["bundle"]["path"])).passed
    assert rows["tensorrt"]["package"]["deployable"] is False


def test_all_refuses_unknown_targets_before_any_work(tmp_path: Path) -> None:
    result = run_cli("all", "--variant", "l1", "--targets", "onnx,tflite", "--out", str(tmp_path))
    assert result.returncode == 2 and "--targets onnx,tflite" in result.stderr
    assert list(tmp_path.iterdir()) == []
