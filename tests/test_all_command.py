"""``efexport all``: every target of one variant, carrying on past a failing target, with bundles and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efexport.exporter.verify import verify_package
from tests.helpers import run_cli


def test_all_carries_on_past_a_failing_target_and_reports_it_and_profiles_it(tmp_path: Path) -> None:
    out, bundles = tmp_path / "out", tmp_path / "bundles"
    taken = out / "efficientformer-l1" / "onnx-fp32"
    taken.mkdir(parents=True)  # an existing package without --force: the first target must fail, alone
    (taken / "keep.txt").write_text("not ours")
    result = run_cli("all", "--variant", "l1", "--targets", "onnx,tensorrt", "--out", str(out), "--bundle-dir",
                     str(bundles), "--profile", "--json")
    assert result.returncode == 4, result.stderr  # the first failure's code: output exists
    summary = json.loads(result.stdout)
    rows = {row["target"]: row for row in summary["targets"]}
    assert summary["status"] == "failed" and list(rows) == ["onnx", "tensorrt"]
    assert rows["onnx"]["status"] == "failed" and rows["onnx"]["exit_code"] == 4
    assert "already exists" in rows["onnx"]["error"] and "onnx failed" in result.stderr
    assert rows["tensorrt"]["status"] == "no-engine" and rows["tensorrt"]["package"]["deployable"] is False
    assert (taken / "keep.txt").read_text() == "not ours" and sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in bundles.iterdir()) == ["efficientformer-l1-tensorrt-fp16.zip",
                                                         "efficientformer-l1-tensorrt-fp16.zip.sha256"]
    assert rows["tensorrt"]["bundle"]["path"] == str(bundles / "efficientformer-l1-tensorrt-fp16.zip")
    assert verify_package(Path(rows["tensorrt"]["bundle"]["path"])).passed
    table = result.stderr.replace("\n", " ")
    assert "efexport all" in table and "failed" in table and "no-engine" in table
    assert "the model loaded for the previous target, shared" in table  # loaded once, for onnx

    # --profile: wall time and peak RSS per stage of each target, the failed target's stages included
    profiles = {row["target"]: row["profile"] for row in summary["targets"]}
    assert [s["stage"] for s in profiles["onnx"]["stages"]] == ["load"]
    stages = profiles["tensorrt"]["stages"]
    assert [s["stage"] for s in stages] == ["load", "reference", "fold", "capture", "export", "validate",
                                            "benchmark", "package"]
    for stage in stages:
        assert stage["completed"] and stage["seconds"] >= 0  # benchmark: nothing to time without TensorRT
        assert stage["peak_rss_bytes"] >= max(stage["rss_before_bytes"], stage["rss_after_bytes"]) > 100 * 2**20
    assert profiles["tensorrt"]["peak_rss_bytes"] == max(s["peak_rss_bytes"] for s in stages)
    assert profiles["tensorrt"]["seconds"] == pytest.approx(sum(s["seconds"] for s in stages), abs=0.01)
    assert summary["peak_rss_bytes"] == max(p["peak_rss_bytes"] for p in profiles.values())
    assert "pipeline profile" in result.stderr and "peak RSS over all" in result.stderr


def test_all_refuses_unknown_targets_before_any_work(tmp_path: Path) -> None:
    result = run_cli("all", "--variant", "l1", "--targets", "onnx,tflite", "--out", str(tmp_path))
    assert result.returncode == 2 and "--targets onnx,tflite" in result.stderr
    assert list(tmp_path.iterdir()) == []
