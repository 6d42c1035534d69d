"""Real measurements of exporter.profiling: no mocks, the numbers come from the kernel or from psutil."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from efexport.exporter.profiling import (
    LINUX_METHOD,
    SAMPLED_METHOD,
    PeakMemory,
    PipelineProfiler,
    StageProfile,
    format_bytes,
    linux_reset_available,
)

ARRAY_BYTES = 50_000_000 * 8  # np.ones(50_000_000), float64: 400 MB, every page written
HOLD_S = 0.15  # long enough for the 10 ms sampler to see the array
MB = 1_000_000
REPO = Path(__file__).resolve().parents[1]

needs_linux_reset = pytest.mark.skipif(not linux_reset_available(), reason="VmHWM cannot be reset here")


def allocate_and_free() -> None:
    """Hold a fully touched 400 MB array for HOLD_S, then free it before the block ends."""
    array = np.ones(ARRAY_BYTES // 8)
    time.sleep(HOLD_S)
    del array


@pytest.mark.parametrize("method", ["auto", "sampled"])
def test_stage_peak_catches_allocation_and_resets_for_the_next_stage(method: str) -> None:
    profiler = PipelineProfiler(method)
    before = psutil.Process().memory_info().rss
    with profiler.stage("allocate"):
        allocate_and_free()
    with profiler.stage("idle"):
        time.sleep(0.05)
    first, second = profiler.stages
    expected = LINUX_METHOD if method == "auto" and linux_reset_available() else SAMPLED_METHOD
    assert first.method == second.method == expected
    assert first.peak_rss_bytes - before >= 0.95 * ARRAY_BYTES, (
        format_bytes(before),
        format_bytes(first.peak_rss_bytes),
    )
    # the array was freed inside the block: the peak is not just the RSS at exit
    assert first.rss_after_bytes <= first.peak_rss_bytes - 0.75 * ARRAY_BYTES
    # the second stage starts from a fresh mark: 400 MB below the first stage's peak
    assert second.peak_rss_bytes <= first.peak_rss_bytes - 0.75 * ARRAY_BYTES, (
        format_bytes(first.peak_rss_bytes),
        format_bytes(second.peak_rss_bytes),
    )
    assert profiler.overall_peak_rss_bytes() == first.peak_rss_bytes


def test_sampler_alone_catches_allocation() -> None:
    with PeakMemory(method="sampled") as memory:
        allocate_and_free()
    assert memory.method == SAMPLED_METHOD
    assert memory.peak_rss_bytes - memory.rss_before_bytes >= 0.95 * ARRAY_BYTES
    assert memory.rss_after_bytes <= memory.peak_rss_bytes - 0.75 * ARRAY_BYTES


@needs_linux_reset
def test_linux_method_catches_a_spike_too_short_to_sample() -> None:
    with PeakMemory(method="linux") as memory:
        array = np.ones(ARRAY_BYTES // 8)
        del array  # no pause: only the kernel's mark sees it reliably
    assert memory.method == LINUX_METHOD
    assert memory.peak_rss_bytes - memory.rss_before_bytes >= 0.95 * ARRAY_BYTES


def test_stage_wall_time() -> None:
    profiler = PipelineProfiler()
    with profiler.stage("sleep"):
        time.sleep(0.2)
    assert profiler.stages[0].seconds >= 0.2
    assert profiler.stages[0].completed


def test_failing_stage_is_recorded_and_reraised() -> None:
    profiler = PipelineProfiler()
    with pytest.raises(ZeroDivisionError), profiler.stage("broken"):
        1 / 0  # noqa: B018
    assert [(s.stage, s.completed) for s in profiler.stages] == [("broken", False)]
    with profiler.stage("after"):  # the failed stage released the process-wide reset
        pass
    assert [s.completed for s in profiler.stages] == [False, True]


@needs_linux_reset
def test_nesting_linux_method_raises() -> None:
    with PeakMemory(method="linux") as outer:
        with pytest.raises(RuntimeError, match="nest"), PeakMemory(method="linux"):
            pass
        with pytest.raises(RuntimeError, match="nest"), PeakMemory():  # auto resolves to the reset here
            pass
        with PeakMemory(method="sampled") as inner:  # sampling does not touch VmHWM: allowed
            pass
    assert outer.method == LINUX_METHOD and inner.method == SAMPLED_METHOD
    profiler = PipelineProfiler()
    with pytest.raises(RuntimeError), profiler.stage("outer"), profiler.stage("inner"):
        pass
    assert [s.stage for s in profiler.stages] == ["outer"]  # the inner stage never started
    with PeakMemory(method="linux"):  # and the flag is clear again
        pass


def test_to_dict_is_json() -> None:
    profiler = PipelineProfiler()
    with profiler.stage("load"):
        pass
    with pytest.raises(ValueError), profiler.stage("fold"):
        raise ValueError("boom")
    data = json.loads(json.dumps(profiler.to_dict()))
    assert [s["stage"] for s in data["stages"]] == ["load", "fold"]
    assert [s["completed"] for s in data["stages"]] == [True, False]
    assert data["peak_rss_bytes"] == profiler.overall_peak_rss_bytes() > 0
    assert data["method"] == profiler.stages[0].method
    assert data["seconds"] == pytest.approx(sum(s.seconds for s in profiler.stages), abs=0.002)
    assert set(data["stages"][0]) == {f for f in StageProfile.__dataclass_fields__}


CHILD_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from efexport.exporter.profiling import PipelineProfiler

    profiler = PipelineProfiler()
    with profiler.stage("child"):
        subprocess.run([sys.executable, "-c", sys.argv[1]], check=True)
    print(json.dumps(profiler.to_dict()))
    """
)


def children_peak(child_code: str) -> int:
    """children_peak_rss_bytes after a stage that runs ``child_code`` in a child interpreter.

    Measured from a small parent interpreter: on Linux a child's ru_maxrss includes its parent's RSS at spawn
    (fork/vfork + exec), so from the pytest process (torch imported, hundreds of MB) any child would pass."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, child_code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)["stages"][0]["children_peak_rss_bytes"]


@pytest.mark.skipif(sys.platform == "win32", reason="no RUSAGE_CHILDREN")
def test_children_peak() -> None:
    big = children_peak("import numpy as np; a = np.ones(40_000_000); a.sum()")  # 320 MB in the child
    small = children_peak("pass")
    assert 300 * MB <= big <= 1000 * MB, format_bytes(big)  # the upper bound catches a KiB/bytes mix-up
    assert small < 150 * MB, format_bytes(small)


def test_format_bytes() -> None:
    assert format_bytes(int(1.23 * 2**30)) == "1.23 GiB"
    assert format_bytes(512 * 2**20) == "512.0 MiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(100) == "100 B"
    assert format_bytes(-2 * 2**20) == "-2.0 MiB"
