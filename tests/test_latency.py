"""The measurement rule (validate.latency): windows until the last medians agree, interleaving, and the report.

The rule is tested against a simulated clock: each call advances it by a scripted duration, so what the rule
decides is exact and no test depends on this machine's speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import jsonschema
import pytest

from efexport.exporter.manifest_schema import manifest_schema
from efexport.validate.latency import LATENCY_SCHEMA, LatencyReport, WindowRule, measure_interleaved, window_spread


class ScriptedClock:
    """A clock in nanoseconds that only moves when a scripted call runs."""

    def __init__(self) -> None:
        self.now = 0
        self.calls: list[str] = []

    def __call__(self) -> int:
        return self.now

    def call(self, name: str, durations_ms: Iterator[float]) -> Callable[[], None]:
        def run() -> None:
            self.calls.append(name)
            self.now += int(next(durations_ms) * 1e6)

        return run


def forever(value: float) -> Iterator[float]:
    while True:
        yield value


def script(*segments: tuple[float, int], then: float) -> Iterator[float]:
    """Each (duration, calls) segment in turn, then ``then`` forever."""
    for value, calls in segments:
        yield from [value] * calls
    yield from forever(then)


RULE = WindowRule(warmup_runs=2, window_runs=4, stable_windows=3, stable_within=0.05, max_windows=8)


def test_a_steady_call_settles_after_the_fewest_windows() -> None:
    clock = ScriptedClock()
    (m,) = measure_interleaved({"a": clock.call("a", forever(2.0))}, RULE, clock).values()
    assert m.converged and m.noise == 0.0 and len(m.window_samples_ms) == 3
    assert m.settled_samples_ms == [2.0] * 12 and m.stats().p50 == 2.0
    assert len(clock.calls) == RULE.warmup_runs + 3 * RULE.window_runs


def test_slow_first_windows_are_waited_out_and_left_out_of_the_statistics() -> None:
    clock = ScriptedClock()
    runs = RULE.window_runs
    calls = {"a": clock.call("a", script((9.0, RULE.warmup_runs), (5.0, runs), (3.0, runs), then=2.0))}
    (m,) = measure_interleaved(calls, RULE, clock).values()
    assert m.window_p50_ms == [5.0, 3.0, 2.0, 2.0, 2.0]  # settled once the last three agreed
    assert m.converged and m.stats().max == 2.0 and m.stats().p50 == 2.0


def test_a_call_that_never_settles_stops_at_the_cap_and_says_so() -> None:
    clock = ScriptedClock()
    windows = [(1.0 if k % 2 == 0 else 2.0, RULE.window_runs) for k in range(RULE.max_windows)]
    alternating = script((1.0, RULE.warmup_runs), *windows, then=1.0)
    (m,) = measure_interleaved({"a": clock.call("a", alternating)}, RULE, clock).values()
    assert len(m.window_samples_ms) == RULE.max_windows and not m.converged
    assert m.window_p50_ms[-3:] == [2.0, 1.0, 2.0] and m.noise == pytest.approx(0.5)  # (2 - 1) / median 2
    assert m.method()["converged"] is False and m.method()["windows"] == RULE.max_windows


def test_windows_alternate_and_run_until_every_call_has_settled() -> None:
    clock, pauses = ScriptedClock(), []
    calls = RULE.window_runs + 1  # with two callables, each window starts with one untimed call
    late = script((1.0, RULE.warmup_runs), (8.0, calls), (4.0, calls), (2.0, calls), then=1.0)
    measured = measure_interleaved({"a": clock.call("a", forever(3.0)), "b": clock.call("b", late)}, RULE, clock,
                                   pause=lambda: pauses.append(len(clock.calls)))
    a, b = measured["a"], measured["b"]
    assert len(a.window_samples_ms) == len(b.window_samples_ms) >= 6  # "a" kept running until "b" settled
    assert a.converged and b.converged and a.interleaved_with == ("b",) and b.interleaved_with == ("a",)
    assert b.window_p50_ms[:3] == [8.0, 4.0, 2.0]  # the untimed call is not in the window
    timed = clock.calls[2 * RULE.warmup_runs:]
    firsts = [timed[i * 2 * calls] for i in range(len(a.window_samples_ms))]
    assert firsts[:4] == ["a", "b", "a", "b"]  # A B, B A, A B, B A: neither always runs first
    assert pauses == [2 * RULE.warmup_runs + i * calls for i in range(2 * len(a.window_samples_ms))]
    assert "pause" in a.method()["window_start"]


@pytest.mark.parametrize("bad", [dict(window_runs=0), dict(stable_windows=1), dict(stable_within=0.0),
                                 dict(stable_within=1.0), dict(stable_windows=5, max_windows=4)])
def test_impossible_rules_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        WindowRule(**bad)


def test_window_spread() -> None:
    assert window_spread([10.0, 10.5, 9.5]) == pytest.approx(0.1)
    assert window_spread([0.0, 0.0]) == 0.0


def test_a_report_follows_the_manifest_schema_of_a_latency_entry() -> None:
    clock = ScriptedClock()
    (m,) = measure_interleaved({"a": clock.call("a", forever(4.0))}, RULE, clock).values()
    report = LatencyReport.from_measurement(m, backend="onnxruntime-cpu", runtime_version="1.0", precision="fp32",
                                            batch_size=2, threads=2, device={"kind": "cpu", "cpu": "test"})
    entry = json.loads(json.dumps(report.to_dict()))
    schema = manifest_schema()
    jsonschema.validate(entry, {"$defs": schema["$defs"], "$ref": "#/$defs/latency_entry"})
    assert entry["schema"] == LATENCY_SCHEMA and entry["timed_runs"] == 12 and entry["noise"] == 0.0
    assert entry["images_per_second"] == pytest.approx(500.0)  # batch 2 in 4 ms
    assert entry["method"]["rule"] == RULE.describe()
