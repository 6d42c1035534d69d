"""Latency measurement and the one latency schema every target's manifest uses."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache

import numpy as np

LATENCY_SCHEMA = "efexport.latency/1"


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    std: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(a.mean()), float(a.min()), float(a.max()),
                   float(a.std()))


@dataclass(frozen=True)
class LatencyReport:
    """One measurement: what ran where, how it was timed, and the statistics in milliseconds."""

    backend: str  # e.g. "onnxruntime-cpu"
    runtime_version: str
    measured: str  # "host_end_to_end" (call to return, on the host) or "device_compute"
    precision: str
    batch_size: int
    threads: int | None
    warmup_runs: int
    timed_runs: int
    stats_ms: LatencyStats
    device: dict = field(default_factory=dict)
    schema: str = LATENCY_SCHEMA

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch_size / self.stats_ms.mean

    def to_dict(self) -> dict:
        return asdict(self) | {"images_per_second": self.images_per_second}


def time_calls(call: Callable[[], object], warmup_runs: int, timed_runs: int) -> list[float]:
    """Wall time of each of ``timed_runs`` calls after ``warmup_runs`` untimed ones, in milliseconds."""
    for _ in range(warmup_runs):
        call()
    samples = []
    for _ in range(timed_runs):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


@cache
def host_fingerprint() -> dict:
    """The CPU and OS a host-side measurement ran on."""
    import cpuinfo  # slow to import and to query: once per process

    info = cpuinfo.get_cpu_info()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "amx_tile", "amx_bf16", "fma", "f16c")
    return {
        "kind": "cpu",
        "cpu": info.get("brand_raw", platform.processor() or "unknown"),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in info.get("flags", []) if f in wanted),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
