"""Benchmark: what the export pipeline costs on top of the tools it wraps (wall time, peak memory).

    python -m benchmarks.bench_pipeline --variant l7 [--targets onnx,coreml,tensorrt] [--json FILE]
    (from the repository root)

Two runs, each a fresh Python process timed from the outside (so both include interpreter start-up and
imports and are directly comparable), one after the other in this order (the pipeline first: whatever the
first run pays for a cold page cache, e.g. reading the libraries, counts against the pipeline, not in its favour):

1. **Pipeline**: ``efexport all --variant V --targets T --out TMP --profile --json --quiet``
   (``python -m exporter``). Its ``--json`` row per target gives the target's seconds and the per-stage profile
   (load, reference, fold, capture, export, validate, benchmark, package: wall time and peak RSS).

2. **Bare tool calls** (``python -m benchmarks.bench_pipeline --bare ...``, this module in a child mode): what a
   user would write by hand for the same targets, with the same model and the same amount of runtime work, but
   none of efexport's own work. Every third-party call is timed separately (``time.perf_counter``):

   * shared: the imports (torch and the model code, onnx + onnxsim + onnxruntime, coremltools), building the
     model once (``exporter.stages.load.load_model(None, V, 0)``: random init; a user builds the model too), and
     the 8 parity inputs (``validate.reference.make_reference_inputs(0, 4, 4)``);
   * onnx: ``torch.onnx.export`` of the unfolded model (TorchScript exporter, opset 17, static batch 1, input
     "image"), ``onnxsim.simplify``, ``onnx.save``, an ``onnxruntime.InferenceSession`` (2 intra-op threads),
     the 8 inputs (batch 1 each), and the least latency work the recipe asks for (10 warm-up + 3 windows x 20
     timed calls);
   * coreml: ``torch.jit.trace`` of the model wrapped as the package computes it (the per-channel 1/std scaling
     an ImageType cannot express, and a softmax), one ``coremltools.convert`` to an FP16 ML Program (iOS16, RGB
     ImageType with scale 1/255 and bias -mean, compute units ALL, ``ClassifierConfig`` with the ImageNet labels)
     and ``MLModel.save``. Core ML cannot run on Linux, so nothing is executed;
   * tensorrt (the portable half; no TensorRT here): ``torch.onnx.export`` with a dynamic batch axis,
     ``onnxsim.simplify``, ``onnx.save``, an onnxruntime session and the 8 inputs in one batch-8 call (as the
     pipeline's check of the prepared ONNX runs them).

   Each call is tagged with the pipeline stage it corresponds to (load, reference, capture, export, validate,
   benchmark; imports count as start-up), so the pipeline's excess can be given per stage ("startup" is each
   process's wall time minus its stages or calls: interpreter start-up, imports, and for the pipeline whatever
   runs between stages). The bare latency calls run the unfolded graph, slower under ONNX Runtime than the
   folded one the pipeline times, so the benchmark stage's comparison favours the bare run a little.

What the pipeline does beyond the bare calls, all counted as pipeline work:

* it builds the model (load) and computes the PyTorch reference outputs (reference): per target, or once when
  its targets share them;
* fold passes, each checked against the unfolded model in float64 and re-traced to count ops (fold);
* a ``torch.jit.trace`` of the folded model checked against it (capture), which the export then reuses;
* ONNX: ``constants_to_initializers`` and ``onnx.checker.check_model``; TensorRT: the op-support check, build
  options, ``build_engine.sh``; Core ML: a two-step conversion (MIL program, then ML Program with the
  classifier) to keep a logits output beside the classifier, and stable package identifiers (export);
* the parity gate against the reference outputs; for Core ML by executing the saved program with efexport's
  reference interpreter (``validate.mil_interpreter``) on the 8 inputs (validate);
* latency windows until the window medians agree (up to 12 windows, where the bare run does 3) and the host
  fingerprint (benchmark);
* metadata embedded in the model file (load + save again), the model card, hashes, manifest.json checked
  against its schema, and self-verification: the files re-hashed and the parity run again on the package's
  runtime, for Core ML the reference interpreter once more (package).

Figures reported, against the goals of the issue (a benchmark: goals are reported as met or not, the exit code
never depends on them):

* wall-time ratio = pipeline process wall / bare process wall, goal <= 1.5;
* peak RSS of the pipeline over all targets, goal <= 4 GB, in bytes with GB = 1e9 bytes. The value is the
  largest of: the profile's per-stage peaks (VmHWM reset per stage), the child's ``ru_maxrss`` from ``wait4``
  (and ``RUSAGE_CHILDREN`` as a cross-check), and the child's VmHWM/VmRSS sampled from here every 20 ms. Note:
  the profiler resets VmHWM at every stage, which also resets what the kernel reports as the process's maxrss,
  so ``ru_maxrss`` only covers the time since the last reset (a lower bound, not the lifetime peak);
* the Core ML interpreter parity time = the coreml target's "validate" stage seconds, goal <= 30 s (stated for
  l3 FP16: for another variant the figure is reported but the goal does not strictly apply).

This process stays light until the children have run (no torch/onnx imports here, only in the bare child), so
its own memory does not leak into the children's ``ru_maxrss``. Exit status: 0 when both runs completed (a
TensorRT target without an engine, exit 8, is normal here), 1 when a run or a target failed (the report is
still written).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "efexport.bench-pipeline/1"
TARGETS = ("onnx", "coreml", "tensorrt")
STAGES = ("load", "reference", "fold", "capture", "export", "validate", "benchmark", "package")
STARTUP = "startup"  # interpreter start-up, imports and anything outside the stages
PIPELINE_OK_EXIT_CODES = (0, 8)  # 8: TensorRT portable half written, no engine built here

WALL_RATIO_GOAL = 1.5
PEAK_RSS_GOAL_BYTES = 4e9  # 4 GB, GB = 1e9 bytes
COREML_PARITY_GOAL_S = 30.0
COREML_PARITY_GOAL_VARIANT = "l3"

# the bare run: the least work the shipped recipes ask for
OPSET = 17
THREADS = 2
WARMUP_RUNS, TIMED_RUNS = 10, 3 * 20  # recipes/onnx.toml: warmup_runs, stable_windows x window_runs
SAMPLE_INTERVAL_S = 0.02


# ----------------------------------------------------------------------------------------------- bare child


class _Calls:
    """Times each call and records it with the group (shared or a target) and the pipeline stage it matches."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, group: str, stage: str, name: str, work):
        start = time.perf_counter()
        result = work()
        self.records.append({"group": group, "stage": stage, "call": name, "seconds": time.perf_counter() - start})
        return result


def _bare_onnx(calls: _Calls, group: str, model, inputs, directory: Path, dynamic: bool) -> None:
    import io
    import warnings

    import onnx
    import onnxruntime as ort
    import onnxsim
    import torch

    buffer = io.BytesIO()
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None

    def export() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.from_numpy(inputs[:1]),), buffer, input_names=["image"],
                              output_names=["logits"], opset_version=OPSET, dynamic_axes=axes, dynamo=False)

    def simplify():
        simplified, ok = onnxsim.simplify(onnx.load_from_string(buffer.getvalue()))
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model")
        return simplified

    def session() -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    path = directory / f"{group}.onnx"
    calls(group, "export", "torch.onnx.export" + (" (dynamic batch)" if dynamic else ""), export)
    simplified = calls(group, "export", "onnxsim.simplify", simplify)
    calls(group, "export", "onnx.save", lambda: onnx.save(simplified, path))
    sess = calls(group, "validate", "onnxruntime.InferenceSession", session)
    if dynamic:  # the prepared ONNX's check: every input in one call, as the pipeline's runner does
        calls(group, "validate", f"onnxruntime run: {len(inputs)} inputs, one batch",
              lambda: sess.run(None, {"image": inputs}))
        return
    calls(group, "validate", f"onnxruntime run: {len(inputs)} inputs, batch 1 each",
          lambda: [sess.run(None, {"image": inputs[i:i + 1]}) for i in range(len(inputs))])

    def latency() -> None:
        single = {"image": inputs[:1]}
        for _ in range(WARMUP_RUNS + TIMED_RUNS):
            sess.run(None, single)

    calls(group, "benchmark", f"onnxruntime latency: {WARMUP_RUNS} warm-up + {TIMED_RUNS} timed calls", latency)


def _bare_coreml(calls: _Calls, model, inputs, directory: Path) -> None:
    import contextlib
    import io
    import logging
    import warnings

    import coremltools as ct
    import torch
    from torch import nn

    from efexport.exporter.preprocessing import IMAGENET

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    labels = [line.strip() for line in (REPO / "exporter" / "data" / "imagenet1k_labels.txt").read_text().splitlines()
              if line.strip()]

    class Classifier(nn.Module):  # what the package computes: 1/std scaling in the graph, softmax probabilities
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("inverse_std", (1 / torch.tensor(IMAGENET.std)).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x * self.inverse_std).softmax(dim=-1)

    def trace():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(Classifier(model).eval(), torch.from_numpy(inputs[:1]), check_trace=False)

    def convert():
        image = ct.ImageType(name="image", shape=(1, 3, 224, 224), scale=1 / 255, bias=[-m for m in IMAGENET.mean],
                             color_layout=ct.colorlayout.RGB)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # progress bars
            warnings.simplefilter("ignore")
            return ct.convert(traced, inputs=[image], convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                              compute_precision=ct.precision.FLOAT16, compute_units=ct.ComputeUnit.ALL,
                              classifier_config=ct.ClassifierConfig(labels))

    traced = calls("coreml", "capture", "torch.jit.trace", trace)
    mlmodel = calls("coreml", "export", "coremltools.convert (mlprogram, FP16, iOS16, image, classifier)", convert)
    calls("coreml", "export", "MLModel.save", lambda: mlmodel.save(str(directory / "model.mlpackage")))


def bare_main(variant: str, targets: list[str], out: Path, json_out: Path) -> None:
    """The bare child: the third-party calls alone, each timed, written to ``json_out``."""
    import importlib
    import resource

    calls = _Calls()
    out.mkdir(parents=True, exist_ok=True)
    calls("shared", STARTUP, "import torch and the model code",
          lambda: (importlib.import_module("torch"), importlib.import_module("efexport.exporter.stages.load")))
    if {"onnx", "tensorrt"} & set(targets):
        calls("shared", STARTUP, "import onnx, onnxsim, onnxruntime",
              lambda: [importlib.import_module(name) for name in ("onnx", "onnxsim", "onnxruntime")])
    if "coreml" in targets:
        def import_coremltools() -> None:
            import contextlib
            import io
            import warnings

            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                importlib.import_module("coremltools")

        calls("shared", STARTUP, "import coremltools", import_coremltools)

    import torch

    from efexport.exporter.stages.load import load_model
    from efexport.validate.reference import make_reference_inputs

    torch.set_num_threads(THREADS)
    model = calls("shared", "load", "build the model (random init)", lambda: load_model(None, variant, 0).model)
    inputs = calls("shared", "reference", "8 inputs (make_reference_inputs)", lambda: make_reference_inputs(0, 4, 4)[0])
    for target in targets:
        if target == "coreml":
            _bare_coreml(calls, model, inputs, out)
        else:
            _bare_onnx(calls, target, model, inputs, out, dynamic=target == "tensorrt")
    records = [r | {"seconds": round(r["seconds"], 4)} for r in calls.records]
    groups: dict[str, float] = {}
    for r in records:
        groups[r["group"]] = round(groups.get(r["group"], 0.0) + r["seconds"], 4)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    json_out.write_text(json.dumps({
        "variant": variant, "targets": targets, "calls": records, "seconds_by_group": groups,
        "calls_seconds": round(sum(r["seconds"] for r in records), 4), "peak_rss_bytes": int(maxrss),
        "torch_threads": torch.get_num_threads(),
    }, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ the parent


@dataclass
class ChildRun:
    """One child process as measured from outside: its command, exit code, wall time, output and memory."""

    command: list[str]
    exit_code: int
    wall_seconds: float
    stdout: str
    stderr: str
    maxrss_bytes: int | None  # ru_maxrss of this child (wait4): since its last VmHWM reset, if it reset it
    sampled_hwm_bytes: int | None  # largest VmHWM seen from here
    sampled_rss_bytes: int | None  # largest VmRSS seen from here

    def to_dict(self) -> dict:
        return {"command": self.command, "exit_code": self.exit_code, "wall_seconds": round(self.wall_seconds, 3),
                "maxrss_bytes": self.maxrss_bytes, "sampled_vmhwm_bytes": self.sampled_hwm_bytes,
                "sampled_vmrss_bytes": self.sampled_rss_bytes}


def _status_bytes(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) of a process from /proc, or None (not Linux, gone, or a zombie)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return (values["VmHWM"], values["VmRSS"]) if len(values) == 2 else None


def run_child(command: list[str], work: Path, name: str) -> ChildRun:
    """Run a child with its output in files, its wall time measured around it, its memory sampled from here
    and its own rusage taken with wait4."""
    stdout_path, stderr_path = work / f"{name}.stdout", work / f"{name}.stderr"
    peaks = {"hwm": None, "rss": None}
    done = threading.Event()
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO)

        def sample() -> None:
            while not done.is_set():
                status = _status_bytes(process.pid)
                if status is not None:
                    peaks["hwm"] = max(peaks["hwm"] or 0, status[0])
                    peaks["rss"] = max(peaks["rss"] or 0, status[1])
                done.wait(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(process.pid, 0)
                wall = time.perf_counter() - start
                done.set()  # the pid is reaped: stop sampling it
                process.returncode = os.waitstatus_to_exitcode(status)
                maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            else:
                process.wait()
                wall, maxrss = time.perf_counter() - start, None
        except BaseException:
            process.kill()
            raise
        finally:
            done.set()
            sampler.join()
    return ChildRun(command, process.returncode, wall, stdout_path.read_text(), stderr_path.read_text(), maxrss,
                    peaks["hwm"], peaks["rss"])


def _rusage_children_bytes() -> int | None:
    """Largest ru_maxrss among this process's reaped children, in bytes; None where there is no resource module."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _goal(value: float | None, goal: float, unit: str, note: str = "") -> dict:
    """A goal's entry in the report: met when the value is at most the goal, None when there is no value."""
    return {"value": value, "goal": goal, "unit": unit, "met": None if value is None else value <= goal,
            "note": note}


def _manifest(row: dict) -> dict:
    """The manifest of the package a target's row names, or {} when there is none or it cannot be read."""
    path = Path(row.get("artifact") or "") / "manifest.json"
    try:
        return json.loads(path.read_text()) if row.get("artifact") else {}
    except (OSError, json.JSONDecodeError):
        return {}


def build_report(variant: str, targets: list[str], pipeline: ChildRun, pipeline_json: dict, manifests: dict,
                 rusage_children: int | None, bare: ChildRun, bare_json: dict | None) -> dict:
    """The report: per target and per stage, pipeline against bare calls, the memory figures, and the goals."""
    rows = pipeline_json.get("targets", [])
    bare_calls = bare_json["calls"] if bare_json else []
    per_target = []
    for row in rows:
        target = row["target"]
        stages = {s["stage"]: s["seconds"] for s in row.get("profile", {}).get("stages", [])}
        own = [c for c in bare_calls if c["group"] == target]
        bare_seconds = round(sum(c["seconds"] for c in own), 4)
        latency = [{"backend": entry["backend"], "windows": entry["method"]["windows"],
                    "converged": entry["method"]["converged"]}
                   for entry in manifests.get(target, {}).get("latency", [])]
        per_target.append({
            "target": target, "status": row["status"], "exit_code": row["exit_code"],
            "pipeline_seconds": row["seconds"], "pipeline_stage_seconds": stages,
            "bare_seconds": bare_seconds, "bare_calls": own,
            "ratio": round(row["seconds"] / bare_seconds, 3) if bare_seconds > 0 else None,
            "pipeline_latency": latency,
        })
    # where the pipeline's extra time goes: each stage over all targets against the bare calls matching it
    stage_seconds = {stage: 0.0 for stage in (STARTUP, *STAGES)}
    for row in rows:
        for s in row.get("profile", {}).get("stages", []):
            stage_seconds[s["stage"]] += s["seconds"]
    stage_seconds[STARTUP] = pipeline.wall_seconds - sum(stage_seconds.values())
    bare_stage = {stage: 0.0 for stage in stage_seconds}
    for c in bare_calls:
        bare_stage[c["stage"]] += c["seconds"]
    bare_stage[STARTUP] += bare.wall_seconds - sum(c["seconds"] for c in bare_calls)  # start-up around the calls
    excess_total = pipeline.wall_seconds - bare.wall_seconds
    by_stage = [{"stage": stage, "pipeline_seconds": round(stage_seconds[stage], 3),
                 "bare_seconds": round(bare_stage[stage], 3),
                 "excess_seconds": round(stage_seconds[stage] - bare_stage[stage], 3),
                 "share_of_excess": round((stage_seconds[stage] - bare_stage[stage]) / excess_total, 4)
                 if excess_total else None} for stage in stage_seconds]

    # memory
    profile_peak = pipeline_json.get("peak_rss_bytes")
    figures = {"profile_stage_peak": profile_peak, "wait4_maxrss": pipeline.maxrss_bytes,
               "rusage_children_maxrss": rusage_children, "sampled_vmhwm": pipeline.sampled_hwm_bytes,
               "sampled_vmrss": pipeline.sampled_rss_bytes}
    known = [v for v in figures.values() if v is not None]
    peak = max(known) if known else None
    stage_peaks: dict[str, int] = {}
    for row in rows:
        for s in row.get("profile", {}).get("stages", []):
            stage_peaks[s["stage"]] = max(stage_peaks.get(s["stage"], 0), s["peak_rss_bytes"])

    ratio = round(pipeline.wall_seconds / bare.wall_seconds, 4) if bare.wall_seconds > 0 else None
    coreml = next((t for t in per_target if t["target"] == "coreml"), None)
    parity_seconds = coreml["pipeline_stage_seconds"].get("validate") if coreml else None
    if coreml is None:
        parity_note = "coreml is not among the targets"
    elif variant != COREML_PARITY_GOAL_VARIANT:
        parity_note = (f"the goal is stated for {COREML_PARITY_GOAL_VARIANT} FP16; this is {variant} (FP16): "
                       "reported for information")
    else:
        parity_note = "the coreml target's validate stage: the reference interpreter on the 8 parity inputs"
    versions = next((m.get("versions", {}) for m in manifests.values() if m.get("versions")), {})
    return {
        "schema": SCHEMA, "variant": variant, "targets": targets,
        "units": {"time": "seconds", "memory": "bytes (GB = 1e9 bytes)"},
        "method": ("pipeline: efexport all --profile --json in a fresh process; bare: the same third-party calls a "
                   "hand-written script makes for these targets (export, simplifier, Core ML conversion, runtime "
                   "sessions and runs), each timed, in a second fresh process run after it; walls measured around "
                   "each process (see benchmarks/bench_pipeline.py)"),
        "efexport_version": versions.get("efexport"),
        "efexport_git_commit": versions.get("efexport_git_commit"),
        "versions": versions,
        "pipeline": pipeline.to_dict() | {"status": pipeline_json.get("status"),
                                          "targets_seconds": round(sum(r["seconds"] for r in rows), 3),
                                          "profile": {r["target"]: r.get("profile") for r in rows}},
        "bare": bare.to_dict() | {"calls": bare_calls,
                                  "calls_seconds": bare_json["calls_seconds"] if bare_json else None,
                                  "seconds_by_group": bare_json["seconds_by_group"] if bare_json else {},
                                  "peak_rss_bytes": bare_json["peak_rss_bytes"] if bare_json else None},
        "per_target": per_target,
        "by_stage": by_stage,
        "totals": {"pipeline_wall_seconds": round(pipeline.wall_seconds, 3),
                   "bare_wall_seconds": round(bare.wall_seconds, 3), "ratio": ratio,
                   "excess_seconds": round(excess_total, 3)},
        "memory": {"peak_rss_bytes": peak, "figures": figures, "stage_peak_rss_bytes": stage_peaks,
                   "bare_peak_rss_bytes": bare_json["peak_rss_bytes"] if bare_json else None},
        "goals": {
            "wall_ratio": _goal(ratio, WALL_RATIO_GOAL, "x", "pipeline process wall / bare process wall, same run"),
            "peak_rss": _goal(peak, PEAK_RSS_GOAL_BYTES, "bytes", "largest of memory.figures; GB = 1e9 bytes"),
            "coreml_parity": _goal(parity_seconds, COREML_PARITY_GOAL_S, "seconds", parity_note),
        },
    }


def _print_report(report: dict) -> None:
    """The report as console tables: per target, per stage, and the goals."""
    from rich.console import Console
    from rich.table import Table

    def gb(n: int | None) -> str:
        return "-" if n is None else f"{n / 1e9:.2f} GB"

    console = Console(width=None if sys.stdout.isatty() else 160)
    totals = report["totals"]
    table = Table("target", "status", "pipeline s", "bare s", "pipeline/bare", "pipeline stages (s)",
                  "bare calls (s)", title=f"efexport all --variant {report['variant']}: pipeline vs bare tool calls",
                  title_justify="left")
    for t in report["per_target"]:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in t["pipeline_stage_seconds"].items())
        calls = ", ".join(f"{c['call']} {c['seconds']:.1f}" for c in t["bare_calls"])
        table.add_row(t["target"], t["status"], f"{t['pipeline_seconds']:.1f}", f"{t['bare_seconds']:.1f}",
                      "-" if t["ratio"] is None else f"{t['ratio']:.2f}x", stages, calls)
    shared = [c for c in report["bare"]["calls"] if c["group"] == "shared"]
    table.add_row("shared", "", "", f"{sum(c['seconds'] for c in shared):.1f}", "", "(bare: imports, the model "
                  "and the inputs, once for all targets)",
                  ", ".join(f"{c['call']} {c['seconds']:.1f}" for c in shared), end_section=True)
    table.add_row("[bold]processes[/]", "", f"{totals['pipeline_wall_seconds']:.1f}",
                  f"{totals['bare_wall_seconds']:.1f}", f"[bold]{totals['ratio']:.2f}x[/]",
                  "wall time of each process, start-up and imports included", "")
    console.print(table)

    stages = Table("stage", "pipeline s", "bare s", "excess s", "share of excess", "peak RSS",
                   title="where the pipeline's extra time goes (all targets)", title_justify="left",
                   caption="bare s: the bare calls matching the stage; startup: process wall minus stages/calls "
                           "(start-up, imports, between stages); peak RSS: the stage's largest over targets")
    peaks = report["memory"]["stage_peak_rss_bytes"]
    for s in report["by_stage"]:
        share = "-" if s["share_of_excess"] is None else f"{s['share_of_excess']:.0%}"
        stages.add_row(s["stage"], f"{s['pipeline_seconds']:.1f}", f"{s['bare_seconds']:.1f}",
                       f"{s['excess_seconds']:.1f}", share, gb(peaks.get(s["stage"])))
    console.print(stages)

    goals = Table("goal", "value", "goal", "met", "note", title="goals (GB = 1e9 bytes)", title_justify="left")
    for name, g in report["goals"].items():
        if g["unit"] == "bytes":
            value, limit = gb(g["value"]), gb(int(g["goal"]))
        elif g["unit"] == "x":
            value, limit = ("-" if g["value"] is None else f"{g['value']:.2f}x"), f"{g['goal']:.1f}x"
        else:
            value, limit = ("-" if g["value"] is None else f"{g['value']:.1f} s"), f"{g['goal']:.0f} s"
        met = "-" if g["met"] is None else ("[green]yes[/]" if g["met"] else "[red]no[/]")
        goals.add_row(name, value, limit, met, g["note"])
    console.print(goals)
    figures = ", ".join(f"{k} {gb(v)}" for k, v in report["memory"]["figures"].items())
    host = report.get("host", {})
    console.print(f"peak RSS figures: {figures}; bare run's own peak {gb(report['memory']['bare_peak_rss_bytes'])}",
                  highlight=False)
    console.print(f"host: {host.get('cpu')}, {host.get('usable_cores')} usable cores, {host.get('os')}; efexport "
                  f"{report['efexport_version']} (git {report['efexport_git_commit'] or 'not recorded'})",
                  highlight=False)


def bench(variant: str, targets: list[str], keep: Path | None) -> tuple[dict, bool]:
    """Run the pipeline child, then the bare child, and build the report; also whether both runs completed."""
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: give a new or empty directory")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        pipeline = run_child([sys.executable, "-m", "efexport.exporter", "all", "--variant", variant, "--targets",
                              ",".join(targets), "--out", str(work / "pipeline"), "--profile", "--json", "--quiet"],
                             work, "pipeline")
        rusage_children = _rusage_children_bytes()  # the pipeline is this process's only child so far
        try:
            pipeline_json = json.loads(pipeline.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"efexport all exited {pipeline.exit_code} without its JSON result:\n"
                               f"{pipeline.stderr[-4000:]}") from None
        if "targets" not in pipeline_json:
            raise RuntimeError(f"efexport all failed before any target: {pipeline_json}")
        manifests = {row["target"]: _manifest(row) for row in pipeline_json["targets"]}
        bare_file = work / "bare.json"
        bare = run_child([sys.executable, "-m", "benchmarks.bench_pipeline", "--bare", "--variant", variant,
                          "--targets", ",".join(targets), "--out", str(work / "bare"), "--json-out", str(bare_file)],
                         work, "bare")
        bare_json = json.loads(bare_file.read_text()) if bare.exit_code == 0 and bare_file.exists() else None
        if bare_json is None:
            print(f"bare run failed (exit {bare.exit_code}):\n{bare.stderr[-4000:]}", file=sys.stderr)
        report = build_report(variant, targets, pipeline, pipeline_json, manifests, rusage_children, bare, bare_json)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    from efexport.validate.latency import host_fingerprint  # only now: the children have run

    report = {"schema": report["schema"], "host": host_fingerprint()} | report
    ok = (bare_json is not None and pipeline.exit_code in PIPELINE_OK_EXIT_CODES
          and all(t["status"] != "failed" for t in report["per_target"]))
    return report, ok


def _targets(text: str) -> list[str]:
    """``--targets``: a comma-separated list of known target names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(TARGETS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """The command line (and, with the hidden ``--bare``, the bare child); returns the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variant", choices=["l1", "l3", "l7"], required=True)
    parser.add_argument("--targets", type=_targets, default=list(TARGETS), help="comma-separated (default: all)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (outputs, children's logs)")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # the child mode
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        if args.out is None or args.json_out is None:
            parser.error("--bare needs --out and --json-out")
        bare_main(args.variant, args.targets, args.out, args.json_out)
        return 0
    report, ok = bench(args.variant, args.targets, args.keep)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report)
    if not ok:
        print("a run or a target failed: see the report", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
