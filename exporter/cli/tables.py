"""Console tables the commands print (rich); what they show also goes to --json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from efexport.exporter.profiling import format_bytes

if TYPE_CHECKING:
    from efexport.exporter.manifest_model import Manifest


def fold_table(report: dict, title: str) -> Table:
    table = Table("pass", "changed", "rewrites", "stored values", "ops", "max abs error", title=title,
                  title_justify="left")
    for r in report["passes"]:
        table.add_row(r["name"], "yes" if r["changed"] else "no", str(r["rewrites"]),
                      f"{r['stored_values_before']:,} -> {r['stored_values_after']:,}",
                      f"{r['ops_before']} -> {r['ops_after']}", f"{r['max_abs_error']:.2e}")
    table.caption = (f"errors against the unfolded model in float64; float32 noise floor (the unfolded model's own "
                     f"float32 error): {report['float32_noise_floor']:.2e}; gate {report['max_abs_gate']:.2e}")
    return table


def summary_table(artifact: Path, manifest: Manifest) -> Table:
    """What an export made (its package directory and typed manifest), in a few lines."""
    parity, weights = manifest.parity, manifest.weights
    table = Table(title=f"{artifact}", show_header=False, title_justify="left")
    table.add_row("weights", f"{weights.file} ({weights.layout}, sha256 {weights.sha256[:12]})"
                  if weights.source == "checkpoint" else weights.source)
    table.add_row("parity", f"{'passed' if parity.passed else 'FAILED'}: max abs {parity.max_abs:.2e}, "
                            f"min cosine {parity.min_cosine:.7f}, top-1 {parity.top1_agreement:.0%} "
                            f"on {len(parity.per_input)} inputs")
    for latency in manifest.latency:
        stats = latency.stats_ms
        threads = f", {latency.threads} threads" if latency.threads else ""
        table.add_row("latency", f"p50 {stats.p50:.2f} ms, p90 {stats.p90:.2f} ms, p99 {stats.p99:.2f} ms "
                                 f"({latency.backend}, batch {latency.batch_size}{threads})")
    if manifest.latency_note is not None:
        table.add_row("latency", f"not measured: {manifest.latency_note}")
    execution = manifest.reference_execution
    if execution and execution.fp16_largest_activations:
        top = execution.fp16_largest_activations[0]
        table.add_row("fp16 headroom", f"largest activation {top.max_abs:.4g} ({top.op} {top.var}), "
                                       f"{top.fraction_of_limit:.2%} of the fp16 limit")
    fold = manifest.fold
    table.add_row("fold", f"{len(fold.passes)} passes, {sum(fold.op_counts_before.values())} -> "
                          f"{sum(fold.op_counts_after.values())} traced ops, max abs error "
                          f"{max((r.max_abs_error for r in fold.passes), default=0.0):.2e}")
    table.add_row("ops", ", ".join(f"{op} {n}" for op, n in manifest.target.op_counts.items()))
    return table


def trace_table(trace: dict, limit: int = 15) -> Table:
    first = trace["first_past_rel_tol"]
    table = Table("op", "output", "max |x|", "abs error", "rel error", title_justify="left",
                  title=f"per-op trace vs {trace['baseline']}: the {limit} largest relative errors")
    for row in sorted(trace["ops"], key=lambda r: -r["rel_err"])[:limit]:
        table.add_row(row["op"], row["var"], f"{row['max_abs']:.4g}", f"{row['abs_err']:.3g}", f"{row['rel_err']:.2%}")
    where = "no op" if first is None else f"first op: {first['op']} {first['var']} ({first['rel_err']:.2%})"
    table.caption = f"past {trace['rel_tol']:.0%} relative error: {where}"
    return table


def profile_table(profiles: list[tuple[str, dict]]) -> Table:
    """Wall time and peak RSS per stage of each profiled export, and the peak over all of them."""
    table = Table("target", "stage", "seconds", "peak RSS", "RSS after", title="pipeline profile",
                  title_justify="left")
    for target, profile in profiles:
        for stage in profile["stages"]:
            mark = "" if stage["completed"] else " (failed)"
            table.add_row(target, stage["stage"] + mark, f"{stage['seconds']:.1f}",
                          format_bytes(stage["peak_rss_bytes"]), format_bytes(stage["rss_after_bytes"]))
        table.add_row(target, "[bold]all stages[/]", f"{profile['seconds']:.1f}",
                      format_bytes(profile["peak_rss_bytes"]), "", end_section=True)
    peak = max(profile["peak_rss_bytes"] for _, profile in profiles)
    methods = sorted({profile["method"] for _, profile in profiles if profile["method"]})
    table.caption = f"peak RSS over all: {format_bytes(peak)} (measured by {', '.join(methods) or 'nothing'})"
    return table


def bench_table(report: dict) -> Table:
    title = f"efexport bench: batch 1, host end-to-end, {report['threads']} threads, {report['device']['cpu']}"
    table = Table("variant", "backend", "p50 ms", "p90 ms", "p99 ms", "noise", "windows", "images/s", "GFLOP/s",
                  "of peak", "vs eager", title=title, title_justify="left")
    for variant in report["variants"]:
        for b in variant["backends"]:
            latency = b["latency"]
            stats, method = latency["stats_ms"], latency["method"]
            windows = f"{method['windows']}" + ("" if method["converged"] else " [yellow](not converged)[/]")
            table.add_row(variant["variant"], b["name"], f"{stats['p50']:.2f}", f"{stats['p90']:.2f}",
                          f"{stats['p99']:.2f}", f"{latency['noise']:.1%}", windows,
                          f"{latency['images_per_second']:.1f}", f"{b['gflops_per_s']:.1f}",
                          f"{b['fraction_of_matmul_peak']:.0%}", f"{b['speedup_over_eager']:.2f}x")
        cost, published = variant["cost"], variant["published"]
        table.add_row(variant["variant"], f"[dim]cost: {cost['gmacs']:.2f} GMACs (published {published['gmacs']}), "
                                          f"{cost['pytorch_parameters'] / 1e6:.2f} M parameters (published "
                                          f"{published['params_m']})[/]", end_section=True)
    peak = report["machine_matmul_peak"]
    table.caption = (f"{report['method']}. Peak for comparison: {peak['what']} reaches {peak['gflops_per_s']:.1f} "
                     "GFLOP/s here.")
    return table


def sweep_table(report: dict) -> Table | None:
    rows = [(v["variant"], t) for v in report["variants"] for t in v["throughput"]]
    if not rows:
        return None
    table = Table("variant", "backend", "batch", "p50 ms", "images/s", "GFLOP/s", "noise", title="throughput by batch",
                  title_justify="left")
    for variant, t in rows:
        latency = t["latency"]
        table.add_row(variant, t["backend"], str(t["batch_size"]), f"{latency['stats_ms']['p50']:.2f}",
                      f"{t['images_per_second']:.1f}", f"{t['gflops_per_s']:.1f}", f"{latency['noise']:.1%}")
    return table


def latency_comparison_table(rows: list[dict]) -> Table:
    table = Table("backend", "measured", "batch", "precision", "previous p50 (ms)", "p50 (ms)", "new / previous",
                  title=f"latency against {rows[0]['previous_version']}", title_justify="left")
    for r in rows:
        table.add_row(r["backend"], r["measured"], str(r["batch_size"]), r["precision"], f"{r['previous_p50_ms']:.2f}",
                      f"{r['p50_ms']:.2f}", f"{r['ratio']:.2f}x")
    return table
