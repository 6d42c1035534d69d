"""Wall time and peak resident memory (RSS) per pipeline stage.

Why: the goal is that exporting the largest variant (l7) to every target peaks at no more than 4 GB of resident
memory on the 2-core, 24 GiB machines the exports run on. To check that, and to see which stage is responsible,
each stage (load, reference, fold, capture, export, validate, benchmark, package) records:

* ``seconds``: wall time (``time.perf_counter``);
* ``peak_rss_bytes``: the highest resident set size of *this* process while the stage ran;
* ``rss_before_bytes`` / ``rss_after_bytes``: RSS when the stage started and when it ended;
* ``children_peak_rss_bytes``: the largest peak RSS of any child process waited for so far
  (``getrusage(RUSAGE_CHILDREN).ru_maxrss``; KiB on Linux, bytes on macOS; None where ``resource`` is missing).

How the peak is measured (``method``):

* ``"linux-vmhwm-reset"`` (preferred, Linux >= 4.0): at the start of a block, write ``5`` to
  ``/proc/self/clear_refs``, which proc(5) documents as resetting the peak resident set size (``VmHWM``) to the
  current RSS; at the end, read ``VmHWM`` from ``/proc/self/status``. The kernel keeps this mark itself, so no
  spike is missed however short. This is the one place the module reads ``/proc`` itself: psutil reports the
  current RSS (``memory_info().rss``, the same number as ``VmRSS``) but neither ``VmHWM`` nor a way to reset
  it. Whether the reset works is checked at every entry (the file is writable and, right after the write,
  ``VmHWM`` dropped or equals the RSS within 1 MiB); if it does not, the block falls back.
* ``"sampled-10ms"`` (fallback: macOS, kernels or sandboxes without the reset, or ``method="sampled"``): a daemon
  thread samples ``psutil.Process().memory_info().rss`` every 10 ms, plus one sample at entry and one at exit;
  the peak is the largest sample.

Limits:

* The ``VmHWM`` reset is process-wide, so blocks using it cannot nest or overlap (in any thread): entering a
  second one raises RuntimeError. It also resets what ``getrusage(RUSAGE_SELF).ru_maxrss`` reports, so a caller
  wanting the process's lifetime peak should use :func:`lifetime_peak_rss_bytes`, which remembers the marks
  that were reset.
* The sampler misses spikes shorter than its period, and needs the GIL to take a sample: a spike inside a call
  that holds the GIL throughout (rare for torch, which releases it in its kernels) can be missed entirely.
  Its figure is therefore a lower bound.
* RSS counts resident pages only: swapped-out memory is not counted, and pages of shared libraries and mapped
  files (libtorch alone is hundreds of MB) are. It is not the cgroup's memory figure, which also counts page
  cache (for instance of the model files a stage writes).
* ``children_peak_rss_bytes`` is cumulative over the life of the process (it never resets per stage), counts
  only children that have been waited for, and is the largest single child, never a sum of children that ran
  at once. On Linux a child started with fork/vfork + exec (as ``subprocess`` does) inherits the parent's RSS at
  spawn time into its own ``ru_maxrss``, so a tiny tool started from a 2 GB parent reports at least 2 GB: the
  figure is an upper bound on a child's own peak whenever the parent was larger.
* Parent and children peaks are separate figures: memory in use on the machine at one moment can be up to
  their sum while a child runs.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import psutil

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

LINUX_METHOD = "linux-vmhwm-reset"
SAMPLE_INTERVAL_S = 0.01
SAMPLED_METHOD = f"sampled-{round(SAMPLE_INTERVAL_S * 1000)}ms"

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_RESET_SLACK_BYTES = 1 << 20  # right after a reset VmHWM may exceed VmRSS by what another thread freed meanwhile

_lock = threading.Lock()
_reset_active = False  # a linux-vmhwm-reset block is open somewhere in this process
_reset_marks_peak = 0  # the largest VmHWM wiped out by our resets, for lifetime_peak_rss_bytes()
_linux_supported: bool | None = None  # probe result, once per process


def format_bytes(n: int) -> str:
    """Human-readable size in binary units: "1.23 GiB", "512.0 MiB", "12.0 KiB", "100 B"."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= 1 << 30:
        return f"{sign}{n / (1 << 30):.2f} GiB"
    if n >= 1 << 20:
        return f"{sign}{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{sign}{n / (1 << 10):.1f} KiB"
    return f"{sign}{n} B"


def _read_hwm() -> int:
    """VmHWM (peak RSS since start or the last reset) of this process in bytes, from /proc/self/status.

    Read by hand because psutil has no peak RSS on Linux (its ``memory_info``/``memory_full_info`` carry the
    current RSS, USS, PSS and swap; a peak only on Windows), and the reset below needs this exact kernel mark."""
    with _STATUS.open() as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # always reported in kB
    raise KeyError("VmHWM")


def _read_status() -> tuple[int, int]:
    """(VmHWM, current RSS) of this process in bytes; the RSS from psutil (``VmRSS``'s figure).

    Two reads, RSS first: the mark only grows between them (no reset runs while ``_lock`` or a block holds it),
    so the peak returned is never below the RSS returned, as when both came from one read of the status file."""
    rss = current_rss_bytes()
    return _read_hwm(), rss


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; True if it verifiably took effect.

    Sound even when it cannot tell a reset from a no-op: if VmHWM equals VmRSS right after the write, the mark
    at the end of the block is the peak since this moment either way."""
    global _reset_marks_peak
    try:
        hwm_before, _ = _read_status()
        with _CLEAR_REFS.open("w") as clear_refs:
            clear_refs.write("5")
        hwm_after, rss_after = _read_status()
    except (OSError, KeyError, ValueError, psutil.Error):
        return False
    _reset_marks_peak = max(_reset_marks_peak, hwm_before)
    return hwm_after < hwm_before or hwm_after <= rss_after + _RESET_SLACK_BYTES


def linux_reset_available() -> bool:
    """Whether this process can reset and read VmHWM (checked once, by doing it)."""
    global _linux_supported
    if _linux_supported is None:
        if not sys.platform.startswith("linux") or not _CLEAR_REFS.exists():
            _linux_supported = False
        else:
            with _lock:
                # a reset while a block is open would spoil it; an open block proves the method works
                _linux_supported = True if _reset_active else _reset_hwm()
    return _linux_supported


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def lifetime_peak_rss_bytes() -> int:
    """Peak RSS of this process since it started, including marks wiped out by VmHWM resets."""
    try:
        hwm = _read_hwm()
    except (OSError, KeyError, ValueError):
        hwm = 0
    self_peak = 0
    if resource is not None:
        self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return max(hwm, self_peak, _reset_marks_peak, current_rss_bytes())


def children_peak_rss_bytes() -> int | None:
    """Largest peak RSS of any waited-for child so far (see the module docstring for what it includes)."""
    if resource is None or not hasattr(resource, "RUSAGE_CHILDREN"):
        return None
    try:
        maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    except (OSError, ValueError):
        return None
    return int(maxrss) * (1 if sys.platform == "darwin" else 1024)


class _Sampler:
    """Daemon thread recording the largest RSS seen every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = self.process.memory_info().rss
            except (psutil.Error, OSError):
                return
            self.peak = max(self.peak, rss)

    def stop(self) -> int:
        rss = self.process.memory_info().rss
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss)
        return self.peak


class PeakMemory:
    """Context manager measuring the peak RSS of this process over its block.

    ``method``: "auto" (the VmHWM reset where it works, else sampling), "linux" (the reset or RuntimeError) or
    "sampled". After the block: ``peak_rss_bytes``, ``rss_before_bytes``, ``rss_after_bytes`` and ``method``
    ("linux-vmhwm-reset" or "sampled-10ms").

    A VmHWM reset is process-wide, so blocks using it cannot nest or overlap: entering one while another is open
    raises RuntimeError (a sampled block may run inside one). Sampling can miss spikes shorter than its 10 ms
    period; its peak is a lower bound.
    """

    def __init__(self, method: str = "auto") -> None:
        if method not in ("auto", "linux", LINUX_METHOD, "sampled", SAMPLED_METHOD):
            raise ValueError(f"unknown method {method!r}: use 'auto', 'linux' or 'sampled'")
        self.requested = method
        self.method: str | None = None
        self.peak_rss_bytes = 0
        self.rss_before_bytes = 0
        self.rss_after_bytes = 0
        self._sampler: _Sampler | None = None

    def __enter__(self) -> PeakMemory:
        global _reset_active
        want_linux = self.requested in ("linux", LINUX_METHOD) or (self.requested == "auto" and linux_reset_available())
        if want_linux:
            with _lock:
                if _reset_active:
                    raise RuntimeError(
                        "PeakMemory blocks using the VmHWM reset cannot nest or overlap: the reset is process-wide"
                    )
                if _reset_hwm():
                    _reset_active = True
                    self.method = LINUX_METHOD
                    self.rss_before_bytes = current_rss_bytes()
                    return self
            if self.requested != "auto":
                raise RuntimeError("resetting VmHWM through /proc/self/clear_refs does not work here")
        self.method = SAMPLED_METHOD
        self._sampler = _Sampler(SAMPLE_INTERVAL_S)
        self.rss_before_bytes = self._sampler.peak
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _reset_active
        if self._sampler is not None:
            self.peak_rss_bytes = self._sampler.stop()
            self.rss_after_bytes = current_rss_bytes()
            self._sampler = None
            return
        try:
            self.peak_rss_bytes, self.rss_after_bytes = _read_status()
        except (OSError, KeyError, ValueError, psutil.Error):  # /proc vanished mid-block: report what is left
            self.rss_after_bytes = current_rss_bytes()
            self.peak_rss_bytes = max(self.rss_before_bytes, self.rss_after_bytes)
        finally:
            with _lock:
                _reset_active = False


@dataclass(frozen=True)
class StageProfile:
    """Wall time and memory of one pipeline stage; sizes in bytes."""

    stage: str
    seconds: float
    peak_rss_bytes: int
    rss_before_bytes: int
    rss_after_bytes: int
    children_peak_rss_bytes: int | None
    method: str
    completed: bool = True

    def to_dict(self) -> dict:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


class PipelineProfiler:
    """Records a StageProfile per stage, in order: ``with profiler.stage("fold"): ...``.

    A stage that raises is still recorded (``completed=False``) and the exception propagates unchanged."""

    def __init__(self, method: str = "auto") -> None:
        self.method = method
        self.stages: list[StageProfile] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        memory = PeakMemory(self.method)
        completed = False
        start = time.perf_counter()
        try:
            with memory:
                yield
            completed = True
        finally:
            if memory.method is not None:  # not recorded when the measurement itself could not start
                self.stages.append(
                    StageProfile(
                        stage=name,
                        seconds=time.perf_counter() - start,
                        peak_rss_bytes=memory.peak_rss_bytes,
                        rss_before_bytes=memory.rss_before_bytes,
                        rss_after_bytes=memory.rss_after_bytes,
                        children_peak_rss_bytes=children_peak_rss_bytes(),
                        method=memory.method,
                        completed=completed,
                    )
                )

    def overall_peak_rss_bytes(self) -> int:
        """The largest stage peak (0 before any stage ran)."""
        return max((s.peak_rss_bytes for s in self.stages), default=0)

    def to_dict(self) -> dict:
        methods = sorted({s.method for s in self.stages})
        children = [s.children_peak_rss_bytes for s in self.stages if s.children_peak_rss_bytes is not None]
        return {
            "stages": [s.to_dict() for s in self.stages],
            "peak_rss_bytes": self.overall_peak_rss_bytes(),
            "children_peak_rss_bytes": max(children) if children else None,
            "seconds": round(sum(s.seconds for s in self.stages), 3),
            "method": methods[0] if len(methods) == 1 else ("+".join(methods) or None),
        }


def release_memory() -> bool:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the next export of
    ``efexport all`` starts from what is still in use rather than from the last export's high-water mark.
    Returns whether the heap could be trimmed (glibc only)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False
