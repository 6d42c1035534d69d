"""The GPU half of the TensorRT target: engine build and execution (TensorRT + CUDA), GPU timing (CUDA only),
and what runs everywhere (availability, report arithmetic, the lazy import).

Tests that need a GPU or TensorRT skip with the reason ``tensorrt_unavailable_reason()`` gives on this machine.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from efexport.exporter.targets.tensorrt.api import tensorrt_unavailable_reason
from efexport.exporter.targets.tensorrt.options import BuildOptions, Profile, nodes_pinned_to_fp32
from efexport.validate.gpu_timing import (
    cuda_event_times,
    gpu_fingerprint,
    gpu_latency_reports,
    host_times_synchronized,
)
from efexport.validate.latency import LATENCY_SCHEMA, LatencyStats

TENSORRT_REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TENSORRT_REASON is not None, reason=f"TensorRT engines: {TENSORRT_REASON}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
REPO = Path(__file__).resolve().parent.parent


def _tensorrt_importable() -> bool:
    try:
        importlib.import_module("tensorrt")
    except Exception:  # ImportError, or OSError from a package without its libraries
        return False
    return True


# --- everywhere ------------------------------------------------------------------------------------------------

def test_unavailable_reason_is_none_exactly_when_tensorrt_and_cuda_work() -> None:
    has_tensorrt, has_cuda = _tensorrt_importable(), torch.cuda.is_available()
    reason = tensorrt_unavailable_reason()
    assert (reason is None) == (has_tensorrt and has_cuda)
    if reason is not None:
        assert reason.strip() == reason and len(reason) > 10
        assert ("tensorrt" in reason) == (not has_tensorrt)
        assert ("no CUDA device" in reason) == (not has_cuda)


def test_importing_the_api_module_does_not_import_tensorrt() -> None:
    # a fresh interpreter: other tests (or the reason check above) may have imported tensorrt into this one
    code = ("import sys; import efexport.exporter.targets.tensorrt.api, efexport.validate.gpu_timing; "
            "print('tensorrt' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_latency_reports_from_known_samples() -> None:
    device = {"kind": "gpu", "name": "Test GPU"}
    compute, host = gpu_latency_reports([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0], runtime_version="10.0.1",
                                        precision="fp16", batch_size=8, warmup_runs=3, device=device)
    assert (compute.measured, host.measured) == ("device_compute", "host_end_to_end")
    for report in (compute, host):
        assert report.schema == LATENCY_SCHEMA
        assert (report.backend, report.runtime_version, report.precision) == ("tensorrt", "10.0.1", "fp16")
        assert (report.batch_size, report.threads, report.warmup_runs, report.timed_runs) == (8, None, 3, 4)
        assert report.device == device and report.device is not device
    assert compute.stats_ms == LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0])
    assert (compute.stats_ms.p50, compute.stats_ms.mean, compute.stats_ms.min, compute.stats_ms.max) == (
        2.5, 2.5, 1.0, 4.0)
    assert (host.stats_ms.p50, host.stats_ms.mean) == (3.5, 3.5)
    assert compute.images_per_second == pytest.approx(8 * 1000 / 2.5)
    assert host.images_per_second == pytest.approx(8 * 1000 / 3.5)
    assert host.to_dict()["images_per_second"] == pytest.approx(8 * 1000 / 3.5)
    assert host.to_dict()["measured"] == "host_end_to_end"


def test_latency_reports_need_samples() -> None:
    with pytest.raises(ValueError, match="no host_end_to_end samples"):
        gpu_latency_reports([1.0], [], runtime_version="x", precision="fp32", batch_size=1, warmup_runs=0,
                            device={})


# --- CUDA only ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def matmul() -> Callable[[], torch.Tensor]:
    a = torch.randn(2048, 2048, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    return lambda: a @ a


@needs_cuda
def test_cuda_event_times_gives_one_positive_sample_per_timed_run(matmul) -> None:
    samples = cuda_event_times(matmul, warmup_runs=3, timed_runs=15)
    assert len(samples) == 15 and all(s > 0 for s in samples)
    stream = torch.cuda.Stream()
    on_stream = cuda_event_times(matmul, warmup_runs=1, timed_runs=5, stream=stream)
    assert len(on_stream) == 5 and all(s > 0 for s in on_stream)


@needs_cuda
def test_synchronized_host_time_covers_the_device_time(matmul) -> None:
    device = cuda_event_times(matmul, warmup_runs=3, timed_runs=30)
    host = host_times_synchronized(matmul, warmup=3, runs=30)
    assert len(host) == 30 and all(s > 0 for s in host)
    assert np.mean(host) >= np.mean(device)  # launch and synchronization come on top of the kernel


@needs_cuda
def test_gpu_reports_from_measured_samples(matmul) -> None:
    fingerprint = gpu_fingerprint()
    assert fingerprint["kind"] == "gpu" and fingerprint["name"]
    assert re.fullmatch(r"\d+\.\d+", fingerprint["compute_capability"])
    assert fingerprint["total_memory_gib"] > 0 and fingerprint["cuda_runtime"] == torch.version.cuda
    compute, host = gpu_latency_reports(cuda_event_times(matmul, 2, 10), host_times_synchronized(matmul, 2, 10),
                                        runtime_version=torch.__version__, precision="fp32", batch_size=1,
                                        warmup_runs=2, device=fingerprint, backend="torch")
    for report, measured in ((compute, "device_compute"), (host, "host_end_to_end")):
        assert report.schema == LATENCY_SCHEMA and report.measured == measured and report.timed_runs == 10
        assert 0 < report.stats_ms.min <= report.stats_ms.p50 <= report.stats_ms.max
        assert report.to_dict()["device"]["kind"] == "gpu" and report.images_per_second > 0


# --- TensorRT and CUDA ---------------------------------------------------------------------------------------------

def _options(precision: str, profile: Profile | None, fp32_layers: tuple[str, ...] = ()) -> BuildOptions:
    return BuildOptions(input_name="image", image_size=224, precision=precision, profile=profile,
                        fp32_layers=fp32_layers, workspace_mib=2048, optimization_level=3,
                        timing_cache="timing.cache", hardware_compatibility="none", version_compatible=False)


@pytest.fixture(scope="module")
def l1(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """EfficientFormer-L1 (seed 0) and its ONNX exports by the project: dynamic batch, and static batch 1."""
    from efexport.exporter.stages.capture import capture
    from efexport.exporter.stages.load import load_model
    from efexport.exporter.targets.onnx.export import export_onnx

    model = load_model(None, "l1", seed=0).model
    out = tmp_path_factory.mktemp("trt")
    dynamic, static = out / "dynamic.onnx", out / "static.onnx"
    export_onnx(capture(model, 224, 1000, dynamic_batch=True), dynamic, 17, "onnxsim")
    export_onnx(capture(model, 224, 1000, dynamic_batch=False), static, 17, "onnxsim")
    return model, dynamic, static


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((11, 3, 224, 224), dtype=np.float32)


@torch.no_grad()
def _reference(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(images)).numpy()


@needs_tensorrt
def test_fp32_engine_matches_pytorch_and_times_sanely(l1, images: np.ndarray, tmp_path: Path) -> None:
    from efexport.exporter.targets.tensorrt.api import EngineRunner, build_engine

    model, onnx_path, _ = l1
    cache = tmp_path / "timing.cache"
    facts = build_engine(onnx_path, tmp_path / "model.plan", _options("fp32", Profile(1, 4, 8)), cache)
    assert re.fullmatch(r"\d+\.\d+", facts["compute_capability"]) and facts["tensorrt"].startswith("10.")
    assert facts["layers_pinned_fp32"] == 0 and not facts["timing_cache_loaded"] and facts["build_seconds"] > 0
    assert (tmp_path / "model.plan").stat().st_size == facts["plan_bytes"] > 0 and cache.stat().st_size > 0

    runner = EngineRunner(tmp_path / "model.plan", precision="fp32")
    assert (runner.backend, runner.static_batch, runner.max_batch, runner.threads) == ("tensorrt", None, 8, None)
    assert runner.is_deployment_runtime and runner.runtime_version == facts["tensorrt"]
    outputs = runner(images)  # 11 images: batches of 8 and 3
    assert outputs.shape == (11, 1000) and outputs.dtype == np.float32
    assert float(np.abs(outputs - _reference(model, images)).max()) <= 1e-4

    device_ms, host_ms = runner.time_batch(4, warmup=3, runs=20)
    assert len(device_ms) == len(host_ms) == 20 and all(s > 0 for s in device_ms + host_ms)
    compute, host = gpu_latency_reports(device_ms, host_ms, runtime_version=runner.runtime_version,
                                        precision="fp32", batch_size=4, warmup_runs=3, device=gpu_fingerprint())
    assert compute.stats_ms.p50 <= compute.stats_ms.max and host.stats_ms.p50 <= host.stats_ms.max
    assert host.stats_ms.mean >= compute.stats_ms.mean  # copies and synchronization come on top
    with pytest.raises(ValueError, match="batch 9"):
        runner.time_batch(9, warmup=0, runs=1)

    # a second build reuses the timing cache it saved
    again = build_engine(onnx_path, tmp_path / "again.plan", _options("fp32", Profile(1, 4, 8)), cache)
    assert again["timing_cache_loaded"]


@needs_tensorrt
def test_fp16_engine_with_pinned_layers_keeps_cosine(l1, images: np.ndarray, tmp_path: Path) -> None:
    from efexport.exporter.targets.tensorrt.api import EngineRunner, build_engine

    model, onnx_path, _ = l1
    pinned = nodes_pinned_to_fp32(onnx.load(onnx_path), ("LayerNormalization", "Softmax", "ReduceMean"))
    assert pinned
    facts = build_engine(onnx_path, tmp_path / "model.plan", _options("fp16", Profile(1, 4, 8), pinned),
                         tmp_path / "timing.cache")
    assert facts["layers_pinned_fp32"] == len(pinned)
    outputs, reference = EngineRunner(tmp_path / "model.plan", precision="fp16")(images), _reference(model, images)
    cosine = (outputs * reference).sum(1) / (np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1))
    assert float(cosine.min()) >= 0.9995


@needs_tensorrt
def test_static_engine_runs_one_image_at_a_time(l1, images: np.ndarray, tmp_path: Path) -> None:
    from efexport.exporter.targets.tensorrt.api import EngineRunner, build_engine

    model, _, onnx_path = l1
    build_engine(onnx_path, tmp_path / "model.plan", _options("fp32", None), tmp_path / "timing.cache")
    runner = EngineRunner(tmp_path / "model.plan")
    assert (runner.static_batch, runner.max_batch) == (1, 1)
    outputs = runner(images[:3])
    assert float(np.abs(outputs - _reference(model, images[:3])).max()) <= 1e-4


@needs_tensorrt
def test_options_that_disagree_with_the_onnx_are_refused(l1, tmp_path: Path) -> None:
    from efexport.exporter.targets.tensorrt.api import build_engine

    _, dynamic, static = l1
    with pytest.raises(ValueError, match=r"not in the network.*no_such_layer"):
        build_engine(dynamic, tmp_path / "a.plan", _options("fp16", Profile(1, 1, 2), ("no_such_layer",)),
                     tmp_path / "timing.cache")
    with pytest.raises(ValueError, match="static batch"):
        build_engine(static, tmp_path / "b.plan", _options("fp32", Profile(1, 1, 2)), tmp_path / "timing.cache")
    assert not (tmp_path / "a.plan").exists() and not (tmp_path / "b.plan").exists()


@needs_tensorrt
def test_parser_errors_name_the_failing_node(tmp_path: Path) -> None:
    from efexport.exporter.targets.tensorrt.api import build_engine

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["image"], ["logits"], name="the_bad_node", domain="com.example")], "bad",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])])
    path = tmp_path / "bad.onnx"
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), path)
    with pytest.raises(RuntimeError, match="the_bad_node"):
        build_engine(path, tmp_path / "bad.plan", _options("fp32", None), tmp_path / "timing.cache")
