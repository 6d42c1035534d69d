"""Latency measurement and the one latency schema every target's manifest and ``efexport bench`` use.

Method (``WindowRule``): warm-up calls, then windows of timed calls until the medians of the last few windows
agree within a relative tolerance, or a cap on windows is hit (then the report says it did not converge).
Several callables are measured interleaved, window by window in alternating order (A B B A A B ...), so drift of
the machine (frequency, a neighbour's load) hits all of them alike. The statistics come from the settled
windows; the spread of their medians is reported as ``noise``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata

import numpy as np

LATENCY_SCHEMA = "efexport.latency/2"
RUNTIME_DISTRIBUTIONS = ("torch", "onnxruntime", "onnxruntime-gpu", "coremltools", "tensorrt", "numpy")


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
    def from_samples(cls, samples_ms: list[float] | tuple[float, ...]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(a.mean()), float(a.min()), float(a.max()),
                   float(a.std()))


@dataclass(frozen=True)
class WindowRule:
    """When a measurement has settled: the medians of the last ``stable_windows`` windows of ``window_runs``
    timed calls each lie within ``stable_within`` of each other ((max - min) / median), or ``max_windows``
    windows have run."""

    warmup_runs: int = 10
    window_runs: int = 20
    stable_windows: int = 3
    stable_within: float = 0.05
    max_windows: int = 12

    def __post_init__(self) -> None:
        if self.window_runs < 1 or self.stable_windows < 2 or self.max_windows < self.stable_windows:
            raise ValueError(f"{self}: needs window_runs >= 1, stable_windows >= 2, max_windows >= stable_windows")
        if not 0 < self.stable_within < 1:
            raise ValueError(f"{self}: stable_within must lie in (0, 1)")

    def describe(self) -> str:
        return (f"{self.warmup_runs} warm-up calls, then windows of {self.window_runs} timed calls until the "
                f"medians of the last {self.stable_windows} agree within {self.stable_within:.0%} (at most "
                f"{self.max_windows} windows)")


def window_spread(medians: list[float] | tuple[float, ...]) -> float:
    """(max - min) / median of window medians: 0 when they agree exactly."""
    middle = statistics.median(medians)
    return (max(medians) - min(medians)) / middle if middle > 0 else 0.0


@dataclass(frozen=True)
class Measurement:
    """The timed samples of one callable under a ``WindowRule``: every window's median, and the samples of the
    settled windows (the last ``stable_windows``), which the statistics describe."""

    rule: WindowRule
    window_samples_ms: tuple[tuple[float, ...], ...]
    interleaved_with: tuple[str, ...] = ()

    @property
    def window_p50_ms(self) -> list[float]:
        return [statistics.median(w) for w in self.window_samples_ms]

    @property
    def settled_samples_ms(self) -> list[float]:
        return [s for w in self.window_samples_ms[-self.rule.stable_windows:] for s in w]

    @property
    def noise(self) -> float:
        """Relative spread of the settled windows' medians."""
        return window_spread(self.window_p50_ms[-self.rule.stable_windows:])

    @property
    def converged(self) -> bool:
        return len(self.window_samples_ms) >= self.rule.stable_windows and self.noise <= self.rule.stable_within

    def stats(self) -> LatencyStats:
        return LatencyStats.from_samples(self.settled_samples_ms)

    def method(self) -> dict:
        """How the numbers were taken, for the report: the rule, what happened, and what ran alongside."""
        return {"rule": self.rule.describe(), "window_runs": self.rule.window_runs,
                "stable_windows": self.rule.stable_windows, "stable_within": self.rule.stable_within,
                "max_windows": self.rule.max_windows, "windows": len(self.window_samples_ms),
                "converged": self.converged, "window_p50_ms": [round(m, 4) for m in self.window_p50_ms],
                "interleaved_with": list(self.interleaved_with),
                "window_start": (f"{SWITCH_PAUSE_S} s pause and one untimed call (other runtimes' threads quiet)"
                                 if self.interleaved_with else "directly")}


def time_calls(call: Callable[[], object], warmup_runs: int, timed_runs: int,
               clock: Callable[[], int] = time.perf_counter_ns) -> list[float]:
    """Wall time of each of ``timed_runs`` calls after ``warmup_runs`` untimed ones, in milliseconds."""
    for _ in range(warmup_runs):
        call()
    samples = []
    for _ in range(timed_runs):
        start = clock()
        call()
        samples.append((clock() - start) / 1e6)
    return samples


SWITCH_PAUSE_S = 0.2  # longer than the runtimes' worker threads spin after their last call (OpenMP, ORT)


def measure_interleaved(calls: Mapping[str, Callable[[], object]], rule: WindowRule,
                        clock: Callable[[], int] = time.perf_counter_ns,
                        pause: Callable[[], None] = lambda: time.sleep(SWITCH_PAUSE_S)) -> dict[str, Measurement]:
    """Measure every callable under ``rule``, one window each in turn, the order reversed every window so none
    always runs first. Stops when all have settled at once, or at ``rule.max_windows``.

    Switching runtimes in one process costs the next window: PyTorch's OpenMP workers and ONNX Runtime's pool
    keep spinning for a while after their last call, competing for the cores. So with more than one callable,
    each window starts after ``pause`` and one untimed call."""
    names = list(calls)
    if not names:
        return {}
    switching = len(names) > 1
    for name in names:
        time_calls(calls[name], rule.warmup_runs, 0, clock)
    windows: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}

    def settled(name: str) -> bool:
        medians = [statistics.median(w) for w in windows[name][-rule.stable_windows:]]
        return len(medians) == rule.stable_windows and window_spread(medians) <= rule.stable_within

    for index in range(rule.max_windows):
        for name in names if index % 2 == 0 else reversed(names):
            if switching:
                pause()
            windows[name].append(tuple(time_calls(calls[name], int(switching), rule.window_runs, clock)))
        if all(settled(name) for name in names):
            break
    return {name: Measurement(rule, tuple(windows[name]), tuple(n for n in names if n != name)) for name in names}


def measure(call: Callable[[], object], rule: WindowRule) -> Measurement:
    return measure_interleaved({"only": call}, rule)["only"]


@dataclass(frozen=True)
class LatencyReport:
    """One measurement: what ran where, how it was timed, and the statistics in milliseconds."""

    backend: str  # e.g. "onnxruntime-cpu"
    runtime_version: str
    measured: str  # "host_end_to_end" (call to return, on the host) or "device_compute"
    precision: str
    batch_size: int
    threads: int | None  # intra-op threads; None where the runtime schedules its own (a GPU, Core ML)
    warmup_runs: int
    timed_runs: int  # samples behind stats_ms
    stats_ms: LatencyStats
    method: dict  # the rule and what happened (windows, converged); Measurement.method or the GPU timer's own
    noise: float | None  # relative spread of the settled windows' medians; None for a single window
    device: dict = field(default_factory=dict)
    compute_units: str | None = None  # Core ML's MLComputeUnits setting
    schema: str = LATENCY_SCHEMA

    @classmethod
    def from_measurement(cls, measurement: Measurement, *, backend: str, runtime_version: str, precision: str,
                         batch_size: int, threads: int | None, device: dict, compute_units: str | None = None,
                         measured: str = "host_end_to_end") -> LatencyReport:
        return cls(backend=backend, runtime_version=runtime_version, measured=measured, precision=precision,
                   batch_size=batch_size, threads=threads, warmup_runs=measurement.rule.warmup_runs,
                   timed_runs=len(measurement.settled_samples_ms), stats_ms=measurement.stats(),
                   method=measurement.method(), noise=round(measurement.noise, 6), device=device,
                   compute_units=compute_units)

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch_size / self.stats_ms.mean

    def to_dict(self) -> dict:
        return asdict(self) | {"images_per_second": self.images_per_second}


def runtime_versions() -> dict[str, str]:
    """Installed versions of the runtimes a measurement may involve (read from package metadata: importing them
    would take seconds)."""
    versions = {}
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@cache
def host_fingerprint() -> dict:
    """The CPU, OS and runtime versions a host-side measurement ran on."""
    import cpuinfo  # slow to import and to query: once per process

    info = cpuinfo.get_cpu_info()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "amx_tile", "amx_bf16", "fma", "f16c")
    return {
        "kind": "cpu",
        "cpu": info.get("brand_raw", platform.processor() or "unknown"),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": sorted(f for f in info.get("flags", []) if f in wanted),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtimes": runtime_versions(),
    }
