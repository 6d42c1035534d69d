"""Benchmark: ``efexport onnx --weights CKPT`` against the bare tool calls it wraps, as interleaved pairs.

    python -m benchmarks.onnx_overhead --pairs 5 [--variant l1] [--before /tmp/before] [--tree start=/tmp/start]
                                       [--profile] [--json FILE] [--keep DIR]      (from the repository root)

A checkpoint in upstream (snap-research) layout with realistic random weights is written once into a temporary
directory, saved as a training checkpoint is (``{"model": state_dict, "epoch": ...}``). Then each round runs,
as fresh processes timed from the outside (interpreter start-up and imports included on both sides):

* **efexport**: ``efexport onnx --weights CKPT --out TMP --force --quiet`` (the installed console script of this
  checkout);
* **bare**: this module in its child mode (``--bare``), what a user writes by hand for the same result:
  ``torch.load(weights_only=True)``, the model built and the upstream keys mapped onto it,
  ``torch.onnx.export`` (TorchScript exporter, opset of the recipe, static batch 1), ``onnxsim.simplify``,
  ``onnx.save``, one ONNX Runtime session (the recipe's threads) over as many parity inputs as the recipe
  uses (batch 1 each), and the latency measurement the pipeline makes (``efexport.validate.latency.measure``
  with the recipe's window rule, batch 1). No PyTorch reference outputs, fold, manifest, hashing or
  verification: everything efexport does beyond these calls counts as its overhead;
* optionally **before** (``--before DIR``): a checkout of an older efexport whose imports are top-level
  (``exporter.*``, e.g. ``git worktree add /tmp/before 2db2012``), run as ``python -m exporter onnx ...`` from
  that directory; and **trees** (``--tree NAME=DIR``): other checkouts in the ``efexport.*`` layout, run as
  ``python -m efexport.exporter onnx ...`` with ``efexport`` resolved to DIR.

The order of the runs changes every round (rotated by one, reversed every other pass), so drift of the machine
and the page cache favour none of them. Reported per round and as medians: each wall time, each efexport run's ratio to
the bare run of the same round, and the noise (the spread of the per-round ratios, (max - min) / median).
With ``--profile`` the efexport runs also get ``--profile --json`` and their per-stage seconds are reported
(medians per stage). The bare run's own calls are timed inside it and reported (medians per call).
A benchmark: it reports, it never passes or fails on a time (exit 1 only when a run failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from efexport.exporter.errors import EfexportError
from efexport.exporter.manifest_schema import load_manifest

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "efexport.bench-onnx-overhead/1"
BARE = "bare"
EFEXPORT = "efexport"


# ----------------------------------------------------------------------------------------------- bare child


def bare_main(variant: str, weights: Path, out: Path, recipe_path: Path, json_out: Path) -> None:
    """The bare child: the third-party calls a hand-written script makes, each timed, written to ``json_out``."""
    import importlib
    import tomllib

    records: list[dict] = []

    def timed(name: str, work):
        start = time.perf_counter()
        result = work()
        records.append({"call": name, "seconds": round(time.perf_counter() - start, 4)})
        return result

    timed("import torch, onnx, onnxsim, onnxruntime and the model code", lambda: [
        importlib.import_module(name) for name in ("torch", "onnx", "onnxsim", "onnxruntime",
                                                   "efexport.exporter.models.efficientformer")])
    import io
    import warnings

    import onnx
    import onnxruntime as ort
    import onnxsim
    import torch

    from efexport.exporter.models.efficientformer import build_model
    from efexport.exporter.models.layouts import upstream_key_to_native
    from efexport.validate.latency import WindowRule, measure
    from efexport.validate.reference import make_reference_inputs

    recipe = tomllib.loads(recipe_path.read_text())
    export, parity, latency = recipe["export"], recipe["parity"], recipe["latency"]
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = timed("torch.load (weights_only)", lambda: torch.load(weights, map_location="cpu", weights_only=True))

    def build() -> torch.nn.Module:
        state = {upstream_key_to_native(k): v for k, v in checkpoint["model"].items()
                 if not k.endswith("attention_bias_idxs")}  # derived from the 7x7 grid, rebuilt by the model
        model = build_model(variant)  # the user knows which variant they trained
        model.load_state_dict(state)
        return model.eval()

    model = timed("build the model, map the keys, load_state_dict", build)
    inputs, _ = timed("parity inputs (make_reference_inputs)", lambda: make_reference_inputs(
        parity["seed"], parity["noise_inputs"], parity["image_inputs"], export["image_size"]))
    buffer = io.BytesIO()

    def to_onnx() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.from_numpy(inputs[:1]),), buffer, input_names=["image"],
                              output_names=["logits"], opset_version=export["opset"], dynamo=False)

    def simplify() -> onnx.ModelProto:
        simplified, ok = onnxsim.simplify(onnx.load_from_string(buffer.getvalue()))
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model")
        return simplified

    def session() -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = latency["threads"]
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    path = out / "model.onnx"
    timed(f"torch.onnx.export (opset {export['opset']}, dynamo=False)", to_onnx)
    simplified = timed("onnxsim.simplify", simplify)
    timed("onnx.save", lambda: onnx.save(simplified, path))
    sess = timed("onnxruntime.InferenceSession", session)
    timed(f"onnxruntime run: {len(inputs)} parity inputs, batch 1 each",
          lambda: [sess.run(None, {"image": inputs[i:i + 1]}) for i in range(len(inputs))])
    rule = WindowRule(warmup_runs=latency["warmup_runs"], window_runs=latency["window_runs"],
                      stable_windows=latency["stable_windows"], stable_within=latency["stable_within"],
                      max_windows=latency["max_windows"])
    batch = inputs[:1].repeat(latency["batch_size"], axis=0)
    measurement = timed("latency: efexport.validate.latency.measure, the recipe's window rule",
                        lambda: measure(lambda: sess.run(None, {"image": batch}), rule))
    json_out.write_text(json.dumps({"calls": records, "latency_windows": len(measurement.window_samples_ms),
                                    "latency_converged": measurement.converged}, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ the parent


def write_checkpoint(variant: str, path: Path) -> None:
    """An upstream-layout training checkpoint of ``variant`` with realistic random weights (tests/helpers.py)."""
    import torch

    from tests.helpers import realistic_model, upstream_state_dict

    torch.save({"model": upstream_state_dict(realistic_model(variant, seed=0)), "epoch": 299}, path)


def _shim(directory: Path, work: Path, name: str) -> Path:
    """A folder whose ``efexport`` is ``directory``: on PYTHONPATH it wins over the editable install's finder."""
    shim = work / f"shim-{name}"
    shim.mkdir()
    (shim / "efexport").symlink_to(directory.resolve(), target_is_directory=True)
    return shim


def commands(args: argparse.Namespace, work: Path, checkpoint: Path) -> dict[str, tuple[list[str], Path, dict]]:
    """Per kind of run: the command, its working directory, its environment."""
    env = os.environ | {"NO_COLOR": "1", "COLUMNS": "200"}
    extra = ["--profile", "--json"] if args.profile else []

    def export_args(name: str) -> list[str]:
        return ["onnx", "--weights", str(checkpoint), "--out", str(work / "out" / name), "--force", "--quiet", *extra]

    console_script = Path(sys.executable).with_name("efexport")
    runs = {} if args.no_current else {EFEXPORT: ([str(console_script), *export_args(EFEXPORT)], work, env)}
    if args.before:
        runs["before"] = ([sys.executable, "-m", "exporter", *export_args("before")], args.before,
                          env | {"PYTHONPATH": str(args.before)})
    for name, directory in args.tree:
        runs[name] = ([sys.executable, "-m", "efexport.exporter", *export_args(name)], work,
                      env | {"PYTHONPATH": str(_shim(directory, work, name))})
    runs[BARE] = ([sys.executable, "-m", "benchmarks.onnx_overhead", "--bare", "--variant", args.variant,
                   "--weights", str(checkpoint),
                   "--out", str(work / "out" / BARE), "--recipe-file", str(REPO / "recipes" / "onnx.toml"),
                   "--json-out", str(work / "bare.json")], REPO, env)
    return runs


def run_once(command: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def _latency_windows(out: Path) -> int | None:
    """How many latency windows the export's benchmark stage ran (its manifest), None when there is none."""
    path = next(out.glob("*/onnx-fp32/manifest.json"), None)
    if path is None:
        return None
    try:
        manifest = load_manifest(path.parent)
    except EfexportError:  # not this efexport's manifest: a --before or --tree checkout may write another version
        return _older_latency_windows(path)
    return manifest.latency[0].method.windows if manifest.latency else None


def _older_latency_windows(path: Path) -> int | None:
    """latency[0].method.windows of a manifest this efexport's model does not read (another checkout's)."""
    try:
        return json.loads(path.read_text())["latency"][0]["method"]["windows"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _order(kinds: list[str], index: int) -> list[str]:
    """Round ``index``'s order: the kinds rotated by one each round, reversed every other pass through them, so
    over any ``len(kinds)`` consecutive rounds each kind runs once in each position."""
    shift = index % len(kinds)
    order = kinds[shift:] + kinds[:shift]
    return order[::-1] if (index // len(kinds)) % 2 else order


def _stage_seconds(stdout: str) -> dict[str, float]:
    """The per-stage seconds of an ``--profile --json`` result (either CLI layout), {} when there are none."""
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError:
        return {}
    profile = result.get("profile") or {}
    return {s["stage"]: s["seconds"] for s in profile.get("stages", [])}


def _spread(values: list[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def bench(args: argparse.Namespace) -> tuple[dict, bool]:
    work = Path(tempfile.mkdtemp(prefix="onnx-overhead-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = work / f"efficientformer_{args.variant}_upstream.pth"
        write_checkpoint(args.variant, checkpoint)
        runs = commands(args, work, checkpoint)
        kinds = list(runs)
        rounds, ok = [], True
        load_before = os.getloadavg()
        for index in range(args.pairs):
            order = _order(kinds, index)
            row: dict = {"round": index + 1, "order": list(order), "seconds": {}, "stages": {}, "latency_windows": {}}
            for kind in order:
                command, cwd, env = runs[kind]
                seconds, done = run_once(command, cwd, env)
                if done.returncode != 0:
                    ok = False
                    print(f"round {index + 1}: {kind} exited {done.returncode}:\n{done.stderr[-3000:]}",
                          file=sys.stderr)
                row["seconds"][kind] = round(seconds, 3)
                if kind == BARE and done.returncode == 0:
                    row["bare"] = json.loads((work / "bare.json").read_text())
                    row["latency_windows"][kind] = row["bare"]["latency_windows"]
                elif kind != BARE:
                    row["latency_windows"][kind] = _latency_windows(work / "out" / kind)
                    if args.profile:
                        row["stages"][kind] = _stage_seconds(done.stdout)
            row["ratio_to_bare"] = {kind: round(s / row["seconds"][BARE], 4) for kind, s in row["seconds"].items()
                                    if kind != BARE}
            rounds.append(row)
            shown = ", ".join(f"{k} {row['seconds'][k]:.1f}s ({row['latency_windows'].get(k)} latency windows)"
                              for k in order)
            ratios = ", ".join(f"{k}/bare {r:.2f}x" for k, r in row["ratio_to_bare"].items())
            print(f"round {index + 1}: {shown}; {ratios}", file=sys.stderr, flush=True)
        load_after = os.getloadavg()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = {kind: {"median_seconds": round(statistics.median(r["seconds"][kind] for r in rounds), 3),
                      "min_seconds": min(r["seconds"][kind] for r in rounds),
                      "max_seconds": max(r["seconds"][kind] for r in rounds),
                      "latency_windows": [r["latency_windows"].get(kind) for r in rounds]} for kind in kinds}
    for kind in kinds:
        if kind == BARE:
            continue
        ratios = [r["ratio_to_bare"][kind] for r in rounds]
        summary[kind] |= {"median_ratio_to_bare": round(statistics.median(ratios), 3),
                          "ratio_range": [min(ratios), max(ratios)], "ratio_noise": round(_spread(ratios), 3)}
        if args.profile:
            stages = [r["stages"].get(kind, {}) for r in rounds]
            names = list(dict.fromkeys(name for s in stages for name in s))
            summary[kind]["median_stage_seconds"] = {
                name: round(statistics.median(s[name] for s in stages if name in s), 3) for name in names}
    if args.before:  # each newer efexport against the old one, round by round
        for kind in kinds:
            if kind not in (BARE, "before"):
                ratios = [r["seconds"][kind] / r["seconds"]["before"] for r in rounds]
                summary[kind]["median_ratio_to_before"] = round(statistics.median(ratios), 3)
    bare_rows = [r["bare"] for r in rounds if "bare" in r]
    if bare_rows:
        calls = [c["call"] for c in bare_rows[0]["calls"]]
        summary[BARE]["median_call_seconds"] = {
            call: round(statistics.median(c["seconds"] for b in bare_rows for c in b["calls"] if c["call"] == call), 3)
            for call in calls}
    report = {"schema": SCHEMA, "variant": args.variant, "pairs": args.pairs, "cores": os.cpu_count(),
              "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
              "commands": {kind: command for kind, (command, _, _) in runs.items()},
              "summary": summary, "rounds": rounds}
    return report, ok


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    summary = report["summary"]
    table = Table("run", "median s", "min-max s", "ratio to bare (median)", "ratio range", "noise",
                  "latency windows",
                  title=f"efexport onnx --weights <{report['variant']} upstream checkpoint> vs bare tool calls, "
                        f"{report['pairs']} interleaved rounds", title_justify="left")
    for kind, s in summary.items():
        ratio = s.get("median_ratio_to_bare")
        table.add_row(kind, f"{s['median_seconds']:.1f}", f"{s['min_seconds']:.1f}-{s['max_seconds']:.1f}",
                      "-" if ratio is None else f"{ratio:.2f}x",
                      "-" if ratio is None else "{:.2f}-{:.2f}x".format(*s["ratio_range"]),
                      "-" if ratio is None else f"{s['ratio_noise']:.0%}",
                      " ".join(str(w) for w in s["latency_windows"]))
    console.print(table)
    for kind, s in summary.items():
        if "median_ratio_to_before" in s:
            console.print(f"{kind} / before, per round (median): {s['median_ratio_to_before']:.2f}x", highlight=False)
    staged = {kind: s["median_stage_seconds"] for kind, s in summary.items() if "median_stage_seconds" in s}
    if staged:
        names = list(dict.fromkeys(name for stages in staged.values() for name in stages))
        stages = Table("stage", *staged, title="median seconds per stage (--profile)", title_justify="left")
        for name in names:
            stages.add_row(name, *(f"{staged[kind].get(name, float('nan')):.2f}" for kind in staged))
        console.print(stages)
    if "median_call_seconds" in summary[BARE]:
        calls = Table("bare call", "median s", title="the bare run's calls", title_justify="left")
        for call, seconds in summary[BARE]["median_call_seconds"].items():
            calls.add_row(call, f"{seconds:.2f}")
        console.print(calls)
    console.print(f"{report['cores']} cores; load average before/after: {report['load_average_before_after']}",
                  highlight=False)


def _tree(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or name in (BARE, EFEXPORT, "before") or not Path(directory).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=DIR with an existing DIR (NAME not bare/efexport)")
    return name, Path(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="rounds (each runs every kind once)")
    parser.add_argument("--variant", choices=["l1", "l3", "l7"], default="l1")
    parser.add_argument("--before", type=Path, help="an old checkout with top-level imports (python -m exporter)")
    parser.add_argument("--tree", type=_tree, action="append", default=[], help="NAME=DIR: another checkout "
                        "(efexport.* layout) run as python -m efexport.exporter")
    parser.add_argument("--no-current", action="store_true", help="leave out this checkout's efexport (compare "
                        "--before and --tree runs only)")
    parser.add_argument("--profile", action="store_true", help="pass --profile --json to the efexport runs")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # the child mode
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--recipe-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare_main(args.variant, args.weights, args.out, args.recipe_file, args.json_out)
        return 0
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.before is not None and not (args.before / "exporter" / "__main__.py").is_file():
        parser.error(f"--before {args.before}: not an efexport checkout with top-level imports")
    report, ok = bench(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    if not ok:
        print("a run failed: see above", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
