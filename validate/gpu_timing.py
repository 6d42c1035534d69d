"""GPU latency: CUDA-event device time, synchronized host time, and their reports in the shared latency schema.

Torch only (no TensorRT), so all of it runs on any CUDA GPU. Two measures, never mixed in one report:

- ``device_compute``: the GPU time between CUDA events recorded on a stream before and after each call (what
  ``trtexec`` calls "GPU Compute Time"); it excludes the host and the host-device copies the call does not enqueue.
- ``host_end_to_end``: wall time from the call to the GPU having finished it (``torch.cuda.synchronize``), so it
  includes launch overhead, copies the call makes and the synchronization itself.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from functools import cache

import torch

from efexport.validate.latency import LatencyReport, LatencyStats, runtime_versions, time_calls


def cuda_event_times(call: Callable[[], object], warmup_runs: int, timed_runs: int,
                     stream: torch.cuda.Stream | None = None) -> list[float]:
    """GPU time of each of ``timed_runs`` calls after ``warmup_runs`` untimed ones, in milliseconds.

    Rule: a pair of timing events is recorded on ``stream`` (default: the current stream) around each call, and
    the calls run with ``stream`` current, so torch work lands on it; other work (e.g. a TensorRT context) must be
    enqueued on that stream by ``call`` itself. Calls are enqueued back to back and synchronized once at the end:
    a synchronization between runs would let the GPU idle and the next start event time that idle gap.
    """
    stream = stream if stream is not None else torch.cuda.current_stream()
    events = []
    with torch.cuda.stream(stream):
        for _ in range(warmup_runs):
            call()
        for _ in range(timed_runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            call()
            end.record(stream)
            events.append((start, end))
    stream.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def host_times_synchronized(call: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Wall time of each of ``runs`` calls after ``warmup`` untimed ones, in milliseconds, each
    measured up to ``torch.cuda.synchronize()`` returning: the host's view of one complete request."""

    def synchronized() -> None:
        call()
        torch.cuda.synchronize()

    torch.cuda.synchronize()  # earlier queued work must not be charged to the first timed call
    return time_calls(synchronized, warmup, runs)


_TIMERS = {"device_compute": "CUDA events around each call, enqueued back to back",
           "host_end_to_end": "wall clock to torch.cuda.synchronize() returning"}


def gpu_latency_reports(device_compute_ms: list[float], host_end_to_end_ms: list[float], *, runtime_version: str,
                        precision: str, batch_size: int, warmup_runs: int, device: dict,
                        backend: str = "tensorrt", threads: int | None = None) -> tuple[LatencyReport, LatencyReport]:
    """The two reports of one GPU measurement, (device_compute, host_end_to_end), from their samples.

    Pure: statistics come from the samples as given, ``timed_runs`` is the number of samples, and images per
    second (``LatencyReport.images_per_second``) is ``batch_size`` over the mean latency.
    """
    reports = []
    for measured, samples in (("device_compute", device_compute_ms), ("host_end_to_end", host_end_to_end_ms)):
        if not samples:
            raise ValueError(f"no {measured} samples: a latency report needs at least one timed run")
        method = {"rule": f"{warmup_runs} warm-up calls, then {len(samples)} timed calls in one run",
                  "windows": 1, "converged": None, "timer": _TIMERS[measured]}
        reports.append(LatencyReport(
            backend=backend, runtime_version=runtime_version, measured=measured, precision=precision,
            batch_size=batch_size, threads=threads, warmup_runs=warmup_runs, timed_runs=len(samples),
            stats_ms=LatencyStats.from_samples(samples), method=method, noise=None, device=dict(device)))
    return reports[0], reports[1]


NVIDIA_SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
                     "power.limit")


def nvidia_smi_facts(index: int = 0) -> dict[str, str]:
    """The driver version and clocks (MHz) of GPU ``index`` from ``nvidia-smi``, or {} where it cannot be asked:
    torch exposes only the CUDA runtime it was built with, not the driver or the clocks."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        result = subprocess.run([exe, f"--id={index}", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
                                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    values = [v.strip() for v in result.stdout.strip().split(",")]
    if result.returncode != 0 or len(values) != len(NVIDIA_SMI_FIELDS):
        return {}
    return {name: value for name, value in zip(NVIDIA_SMI_FIELDS, values, strict=True) if value not in ("", "[N/A]")}


@cache
def gpu_fingerprint(index: int | None = None) -> dict:
    """The GPU (default: the current CUDA device) a device-side measurement ran on: the GPU counterpart of
    ``validate.latency.host_fingerprint``. Raises RuntimeError where no CUDA device is visible."""
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible")
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    smi = nvidia_smi_facts(index)
    return {
        "kind": "gpu",
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "cuda_runtime": torch.version.cuda,
        "driver": smi.get("driver_version"),
        "clocks_mhz": {k.removeprefix("clocks."): v for k, v in smi.items() if k.startswith("clocks.")},
        "torch": torch.__version__,
        "runtimes": runtime_versions(),
    }
