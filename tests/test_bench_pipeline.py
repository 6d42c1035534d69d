"""``python -m benchmarks.bench_pipeline``: one real, small run (l1, ONNX) and the invariants of its report.

Times and whether a goal is met depend on the machine: only the report's structure and its internal consistency
are checked, never an absolute figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_pipeline import STAGES, STARTUP, _goal, main
from tests.helpers import REPO

# One worker runs every test that reads the report, and the report is made once per session: with a module scope,
# xdist's interleaving of modules on a worker would tear it down and run the benchmark again.
pytestmark = pytest.mark.xdist_group("bench-pipeline")


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-pipeline") / "report.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_pipeline", "--variant", "l1",
                              "--targets", "onnx", "--json", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "pipeline vs bare tool calls" in result.stdout and "goals" in result.stdout
    return json.loads(out.read_text())


def test_report_names_the_run_and_the_host(report: dict) -> None:
    assert report["schema"] == "efexport.bench-pipeline/1"
    assert report["variant"] == "l1" and report["targets"] == ["onnx"]
    assert report["host"]["usable_cores"] >= 1 and report["efexport_version"]
    assert "efexport_git_commit" in report
    assert report["units"]["memory"] == "bytes (GB = 1e9 bytes)"


def test_bare_calls_are_positive_and_add_up(report: dict) -> None:
    bare = report["bare"]
    calls = bare["calls"]
    assert {c["group"] for c in calls} == {"shared", "onnx"}
    assert all(c["seconds"] > 0 for c in calls), calls
    assert sum(c["seconds"] for c in calls) == pytest.approx(bare["calls_seconds"], abs=1e-3)
    for group, seconds in bare["seconds_by_group"].items():
        assert sum(c["seconds"] for c in calls if c["group"] == group) == pytest.approx(seconds, abs=1e-3)
    (onnx,) = report["per_target"]
    assert onnx["bare_seconds"] == pytest.approx(bare["seconds_by_group"]["onnx"], abs=1e-3)
    assert onnx["bare_calls"] == [c for c in calls if c["group"] == "onnx"]
    names = [c["call"] for c in onnx["bare_calls"]]
    assert names[:3] == ["torch.onnx.export", "onnxsim.simplify", "onnx.save"]
    assert {c["stage"] for c in calls} <= {STARTUP, *STAGES}
    assert bare["wall_seconds"] >= bare["calls_seconds"]  # the process's wall holds its calls
    assert bare["exit_code"] == 0 and bare["peak_rss_bytes"] > 0


def test_pipeline_profile_has_the_eight_stages(report: dict) -> None:
    (onnx,) = report["per_target"]
    assert onnx["status"] == "ok" and onnx["exit_code"] == 0
    stages = report["pipeline"]["profile"]["onnx"]["stages"]
    assert [s["stage"] for s in stages] == list(STAGES) and all(s["completed"] for s in stages)
    assert list(onnx["pipeline_stage_seconds"]) == list(STAGES)
    assert onnx["pipeline_seconds"] >= sum(s["seconds"] for s in stages) - 0.05  # the row's seconds: to 0.1 s
    assert report["pipeline"]["wall_seconds"] >= report["pipeline"]["targets_seconds"]
    assert onnx["pipeline_latency"] and all(entry["windows"] >= 3 for entry in onnx["pipeline_latency"])


def test_peak_rss_covers_every_stage(report: dict) -> None:
    memory = report["memory"]
    stages = report["pipeline"]["profile"]["onnx"]["stages"]
    assert memory["peak_rss_bytes"] > 0
    assert memory["peak_rss_bytes"] >= max(s["rss_after_bytes"] for s in stages)
    assert memory["peak_rss_bytes"] >= max(s["peak_rss_bytes"] for s in stages)
    assert memory["peak_rss_bytes"] == max(v for v in memory["figures"].values() if v is not None)
    assert memory["figures"]["profile_stage_peak"] == max(s["peak_rss_bytes"] for s in stages)
    assert memory["stage_peak_rss_bytes"] == {s["stage"]: s["peak_rss_bytes"] for s in stages}


def test_ratio_and_stage_excess_are_consistent(report: dict) -> None:
    totals = report["totals"]
    assert totals["pipeline_wall_seconds"] == report["pipeline"]["wall_seconds"]
    assert totals["bare_wall_seconds"] == report["bare"]["wall_seconds"]
    assert totals["ratio"] == pytest.approx(totals["pipeline_wall_seconds"] / totals["bare_wall_seconds"], rel=1e-3)
    by_stage = report["by_stage"]
    assert [s["stage"] for s in by_stage] == [STARTUP, *STAGES]
    assert sum(s["pipeline_seconds"] for s in by_stage) == pytest.approx(totals["pipeline_wall_seconds"], abs=0.01)
    assert sum(s["bare_seconds"] for s in by_stage) == pytest.approx(totals["bare_wall_seconds"], abs=0.01)
    assert sum(s["excess_seconds"] for s in by_stage) == pytest.approx(totals["excess_seconds"], abs=0.01)
    for s in by_stage:
        assert s["excess_seconds"] == pytest.approx(s["pipeline_seconds"] - s["bare_seconds"], abs=0.002)
    pipeline_only = {s["stage"]: s["bare_seconds"] for s in by_stage}
    assert pipeline_only["fold"] == pipeline_only["package"] == 0  # no bare call is fold or package work


def test_goals_say_met_exactly_when_within_the_goal(report: dict) -> None:
    goals = report["goals"]
    assert set(goals) == {"wall_ratio", "peak_rss", "coreml_parity"}
    assert goals["wall_ratio"]["goal"] == 1.5 and goals["peak_rss"]["goal"] == 4e9
    assert goals["coreml_parity"]["goal"] == 30
    assert goals["wall_ratio"]["value"] == report["totals"]["ratio"]
    assert goals["peak_rss"]["value"] == report["memory"]["peak_rss_bytes"]
    for name in ("wall_ratio", "peak_rss"):
        assert goals[name]["met"] == (goals[name]["value"] <= goals[name]["goal"])
    # no coreml target: nothing to judge
    assert goals["coreml_parity"]["value"] is None and goals["coreml_parity"]["met"] is None


def test_goal_judgement_and_target_validation() -> None:
    assert _goal(1.5, 1.5, "x")["met"] is True and _goal(1.51, 1.5, "x")["met"] is False
    assert _goal(None, 30.0, "seconds")["met"] is None
    with pytest.raises(SystemExit) as exc:
        main(["--variant", "l1", "--targets", "onnx,tflite"])
    assert exc.value.code == 2


def test_bare_mode_needs_its_paths(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--bare", "--variant", "l1", "--out", str(tmp_path)])
    assert exc.value.code == 2
