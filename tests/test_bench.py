"""``efexport bench`` end to end (the CLI as a subprocess, l1, short windows) and its bad inputs.

Nothing here asserts a time: the measurements are checked for consistency (schema, statistics, ratios, costs),
never for speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from efexport.exporter.manifest_schema import manifest_schema
from tests.packages import exported_package

SHARED_PACKAGES = pytest.mark.xdist_group("l1-packages")
QUICK = ["--warmup-runs", "1", "--window-runs", "3", "--max-windows", "3"]


def efexport(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "efexport.exporter", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="session")  # not module: xdist interleaves modules on a worker, which would bench again
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One bench of l1 over a root holding its ONNX and Core ML packages."""
    root = tmp_path_factory.mktemp("bench-root")
    (root / "efficientformer-l1").mkdir()
    for target in ("onnx", "coreml"):
        package, _ = exported_package(target, tmp_path_factory)
        (root / "efficientformer-l1" / package.name).symlink_to(package)
    reports = tmp_path_factory.mktemp("bench-report")
    result = efexport("bench", "--variant", "l1", "--out", str(root), "--report-dir", str(reports),
                      "--batches", "1,2", *QUICK, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), reports


def _backends(report: dict) -> dict[str, dict]:
    (variant,) = report["variants"]
    return {b["name"]: b for b in variant["backends"]}


@SHARED_PACKAGES
def test_every_backend_is_timed_interleaved_in_the_shared_schema(bench: tuple[dict, Path]) -> None:
    report, _ = bench
    backends = _backends(report)
    assert list(backends) == ["pytorch-eager", "pytorch-eager-folded", "onnxruntime-plain", "onnxruntime-folded",
                              "package onnx-fp32 on onnxruntime-cpu"]
    schema = manifest_schema()
    for name, backend in backends.items():
        latency = backend["latency"]
        jsonschema.validate(latency, {"$defs": schema["$defs"], "$ref": "#/$defs/latency_entry"})
        method = latency["method"]
        assert sorted(method["interleaved_with"]) == sorted(set(backends) - {name})
        assert method["windows"] == len(method["window_p50_ms"]) <= 3 and latency["threads"] == 2
        stats = latency["stats_ms"]
        assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
        assert backend["speedup_over_eager"] == pytest.approx(
            backends["pytorch-eager"]["latency"]["stats_ms"]["p50"] / stats["p50"])
    windows = {b["latency"]["method"]["windows"] for b in backends.values()}
    assert len(windows) == 1  # interleaved: every backend ran the same windows


@SHARED_PACKAGES
def test_ratios_costs_and_published_figures(bench: tuple[dict, Path]) -> None:
    report, _ = bench
    (variant,) = report["variants"]
    p50 = {name: b["latency"]["stats_ms"]["p50"] for name, b in _backends(report).items()}
    ratios = variant["p50_ratios"]
    assert ratios["onnxruntime-folded/onnxruntime-plain"] == pytest.approx(
        p50["onnxruntime-folded"] / p50["onnxruntime-plain"])
    assert ratios["onnxruntime-folded/pytorch-eager"] == pytest.approx(p50["onnxruntime-folded"] / p50["pytorch-eager"])
    cost = variant["cost"]
    assert cost["gmacs"] == pytest.approx(variant["published"]["gmacs"], rel=0.01)  # 1.29 counted vs 1.30 published
    assert cost["pytorch_parameters"] / 1e6 == pytest.approx(variant["published"]["params_m"], abs=0.01)
    peak = report["machine_matmul_peak"]["gflops_per_s"]
    for backend in variant["backends"]:
        expected = 2 * cost["macs"] / (backend["latency"]["stats_ms"]["p50"] / 1000) / 1e9
        assert backend["gflops_per_s"] == pytest.approx(expected)
        assert backend["fraction_of_matmul_peak"] == pytest.approx(expected / peak)
    assert variant["published"]["status"] == "published, not measured here"


@SHARED_PACKAGES
def test_batch_sweep_runs_both_exports_at_each_batch(bench: tuple[dict, Path]) -> None:
    report, _ = bench
    (variant,) = report["variants"]
    got = [(t["backend"], t["batch_size"], t["latency"]["batch_size"]) for t in variant["throughput"]]
    assert got == [("onnxruntime-plain", 1, 1), ("onnxruntime-folded", 1, 1),
                   ("onnxruntime-plain", 2, 2), ("onnxruntime-folded", 2, 2)]
    for t in variant["throughput"]:
        assert t["images_per_second"] == pytest.approx(1000 * t["batch_size"] / t["latency"]["stats_ms"]["mean"])


@SHARED_PACKAGES
def test_what_was_not_measured_says_why(bench: tuple[dict, Path]) -> None:
    report, _ = bench
    (variant,) = report["variants"]
    not_measured = variant["not_measured"]
    assert "no tensorrt package of l1" in not_measured["tensorrt"]
    (coreml,) = [why for what, why in not_measured.items() if what.startswith("coreml-fp16")]
    assert "macOS" in coreml  # the interpreter is a reference execution: never timed


@SHARED_PACKAGES
def test_report_and_plots_are_written(bench: tuple[dict, Path]) -> None:
    report, directory = bench
    written = report.pop("written")
    assert json.loads((directory / "bench.json").read_text()) == report
    assert sorted(Path(p).name for p in written.values()) == ["accuracy.png", "bench.json", "latency.png",
                                                              "throughput.png"]
    for name in ("accuracy.png", "latency.png", "throughput.png"):
        with Image.open(directory / name) as image:
            assert image.format == "PNG" and image.size[0] > 600
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*"))
    assert report["schema"] == "efexport.bench/1" and report["device"]["runtimes"]["torch"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--variant", "l1", "--variant", "l3", "--weights", "x.pth"], 2, "--weights holds one variant"),
    (["--variant", "l1", "--batches", "1,0"], 2, "batch sizes must be at least 1"),
    (["--variant", "l1", "--batches", "1,x"], 2, "give comma-separated integers"),
    (["--variant", "l1", "--target", "tflite"], 2, "--target tflite: choose from onnx, coreml, tensorrt, coreai"),
    (["--variant", "l1", "--targets", "tflite"], 2, "--targets tflite: choose from"),  # the deprecated spelling
    ([], 2, "give --variant"),
])
def test_bad_options_fail_before_measuring(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = efexport("bench", "--out", str(tmp_path), *args)
    assert result.returncode == code and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_report_directory_fails_before_measuring(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = efexport("bench", "--variant", "l1", "--report-dir", str(blocker / "bench"))
    assert result.returncode == 4 and "is not a directory" in result.stderr
