"""Benchmark: what the fold stage buys in the exported ONNX graph and in ONNX Runtime latency.

For each variant, side by side in one run:
  (a) plain: ``torch.onnx.export`` of the unfolded model + onnxsim, as a user would do by hand;
  (b) ours: fold passes -> capture -> export -> onnxsim -> clean-up, as ``efexport onnx`` does.
It reports node counts by op type and ONNX Runtime CPU latency measured interleaved (A B A B ...
windows, medians), with the ratio b/a. A benchmark, not a test: nothing here passes or fails.
Every registered family's variants can be benched (EfficientFormer l1 l3 l7, EfficientFormerV2 s0 s1 s2 l).

    python -m benchmarks.bench_fold --variants l1 l3 l7 --json fold-bench.json   (from the repository root)
    python -m benchmarks.bench_fold --variants s0 s1 s2 l
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import torch
from rich.console import Console
from rich.table import Table

from efexport.exporter.bench import onnx_recipe, plain_export
from efexport.exporter.models import FAMILIES
from efexport.exporter.stages.capture import capture
from efexport.exporter.stages.fold import fold_model, fold_probe
from efexport.exporter.stages.load import load_model
from efexport.exporter.targets.onnx.export import OnnxRunner, export_onnx, op_counts
from efexport.validate.latency import WindowRule, host_fingerprint, measure_interleaved
from efexport.validate.reference import make_reference_inputs


def simplified_plain_export(model: torch.nn.Module, path: Path, opset: int) -> dict[str, int]:
    """The plain export ``efexport bench`` times, then onnxsim, as a user who knows the simplifier would do."""
    import onnxsim

    simplified, ok = onnxsim.simplify(plain_export(model, path, opset, dynamic_batch=False))
    if not ok:
        raise RuntimeError("onnxsim failed on the plain export")
    onnx.save(simplified, path)
    return op_counts(simplified)


def folded_export(model: torch.nn.Module, path: Path, opset: int) -> dict[str, int]:
    """As ``efexport onnx --opset N`` does: the shipped recipe's passes (erf-gelu only below opset 20)."""
    recipe = onnx_recipe(opset)
    probe = fold_probe(*make_reference_inputs(0, 1, 1))
    folded = fold_model(model, list(recipe.fold.passes), probe, max_abs=recipe.fold.max_abs)
    return export_onnx(capture(folded.model, 224, 1000, dynamic_batch=False), path, opset, "onnxsim").op_counts


def interleaved_latency(paths: dict[str, Path], threads: int, windows: int, runs: int) -> dict[str, dict]:
    """Median over the settled windows for each model, windows alternating between the models."""
    image = make_reference_inputs(1, 1, 0)[0]
    runners = {name: OnnxRunner(path, threads) for name, path in paths.items()}
    rule = WindowRule(warmup_runs=5, window_runs=runs, stable_windows=3, max_windows=max(3, windows))
    measured = measure_interleaved({name: (lambda r=runner: r(image)) for name, runner in runners.items()}, rule)
    return {name: {"median_ms": statistics.median(m.settled_samples_ms), "window_medians_ms": m.window_p50_ms,
                   "converged": m.converged} for name, m in measured.items()}


def bench_variant(variant: str, opset: int, threads: int, windows: int, runs: int) -> dict:
    """One variant (random init, seed 0) exported both ways: op counts, node reduction and latency ratio."""
    model = load_model(None, variant, seed=0).model
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"plain": Path(tmp) / "plain.onnx", "folded": Path(tmp) / "folded.onnx"}
        counts = {"plain": simplified_plain_export(model, paths["plain"], opset),
                  "folded": folded_export(model, paths["folded"], opset)}
        latency = interleaved_latency(paths, threads, windows, runs)
    totals = {name: sum(c.values()) for name, c in counts.items()}
    return {
        "variant": variant, "opset": opset, "op_counts": counts, "nodes": totals,
        "node_reduction": 1 - totals["folded"] / totals["plain"],
        "latency": latency, "latency_ratio_folded_over_plain":
            latency["folded"]["median_ms"] / latency["plain"]["median_ms"],
    }


def _table(results: list[dict]) -> Table:
    """The console table: node counts, latency and the op types whose counts differ, one row per variant."""
    table = Table("variant", "nodes plain", "nodes folded", "reduction", "ORT plain ms", "ORT folded ms",
                  "folded/plain", "ops that differ (plain -> folded)", title="fold stage: ONNX nodes and latency")
    for r in results:
        plain, folded = Counter(r["op_counts"]["plain"]), Counter(r["op_counts"]["folded"])
        differ = ", ".join(f"{op} {plain[op]}->{folded[op]}" for op in sorted(set(plain) | set(folded))
                           if plain[op] != folded[op])
        table.add_row(r["variant"], str(r["nodes"]["plain"]), str(r["nodes"]["folded"]),
                      f"{r['node_reduction']:.1%}", f"{r['latency']['plain']['median_ms']:.2f}",
                      f"{r['latency']['folded']['median_ms']:.2f}", f"{r['latency_ratio_folded_over_plain']:.3f}",
                      differ)
    return table


def main() -> None:
    """The command line: bench the variants, print the table, write the JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["l1", "l3", "l7"],
                        choices=[v for entry in FAMILIES for v in entry.variants])
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=12, help="at most this many alternating windows per model")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per window")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [bench_variant(v, args.opset, args.threads, args.windows, args.runs) for v in args.variants]
    Console(width=200).print(_table(results))
    if args.json:
        args.json.write_text(json.dumps({"device": host_fingerprint(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
