"""``efexport bench``: latency on every backend, interleaved in one process, with plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import json_out, run_guarded, target_names
from efexport.exporter.cli.tables import bench_table, sweep_table
from efexport.exporter.errors import UsageError


def _batch_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} {text}: give comma-separated integers, e.g. 1,2,4,8") from None
    return values


def bench_command(
    variants: options.Variants = None,
    weights: options.Weights = None,
    seed: options.Seed = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output root: built packages are looked up under "
                                      "OUT/MODEL-VARIANT/, and the report and plots go to OUT/bench/ "
                                      "unless --report-dir says otherwise.")] = Path("artifacts"),
    target: Annotated[list[str] | None, typer.Option("--target", "-t", show_default=False,
                                                     help="Whose built packages to time (repeatable; default: every "
                                                          "target whose runtime is present here).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads of every CPU runtime (PyTorch "
                                         "intra-op, ONNX Runtime intra-op), pinned for the whole run.")] = 2,
    batches: Annotated[str, typer.Option("--batches", help="Batch sizes of the throughput sweep on ONNX Runtime "
                                         "(plain and folded exports); empty for none.")] = "1,2,4,8,16,32",
    compile_model: Annotated[bool, typer.Option("--compile", help="Also time torch.compile of the folded model "
                                                "(compiling takes minutes).")] = False,
    warmup_runs: Annotated[int, typer.Option("--warmup-runs", min=0, help="Untimed calls per backend first.")] = 10,
    window_runs: Annotated[int, typer.Option("--window-runs", min=1, help="Timed calls per window.")] = 20,
    stable_within: Annotated[float, typer.Option("--stable-within", min=0.001, max=0.999, help="Windows continue "
                                                 "until the medians of the last 3 agree within this relative "
                                                 "spread...")] = 0.05,
    max_windows: Annotated[int, typer.Option("--max-windows", min=3, help="...or this many windows ran (reported "
                                             "as not converged).")] = 12,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Where bench.json and the PNG plots go "
                                                    "(default OUT/bench).", show_default=False)] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write bench.json only.")] = False,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
    targets: options.DeprecatedTargets = None,
) -> None:
    """Time the model on every backend a user could pick, interleaved in one process: PyTorch eager (as loaded
    and folded), ONNX Runtime on a plain torch.onnx.export and on efexport's folded export, optionally
    torch.compile, and every built package whose runtime is present here. Windows of timed calls run until the
    last three agree; p50/p90/p99 with the spread as noise; a throughput sweep by batch; MACs from efexport's
    graph and achieved GFLOP/s. Writes bench.json and latency.png, throughput.png, accuracy.png (measured latency
    against the paper's published top-1 and iPhone 12 figures, labelled as published)."""
    from efexport.exporter.bench import BenchSettings, run_bench
    from efexport.exporter.errors import OutputError
    from efexport.exporter.models import FAMILIES
    from efexport.exporter.output import check_output_root, write_atomically, write_failure
    from efexport.validate.latency import WindowRule
    from efexport.validate.plots import write_plots

    # a wide table: keep it whole when stderr is a pipe or a CI log, where rich would assume 80 columns
    console = None if quiet else Console(stderr=True, width=None if sys.stderr.isatty() else 150)

    names = tuple(target_names(target, targets, as_json))

    def work() -> tuple[dict, dict]:
        if not variants and weights is None:
            raise UsageError("give --variant (repeatable) or --weights")
        settings = BenchSettings(
            variants=tuple(map(str, variants)) if variants else (None,), weights=weights, seed=seed,
            threads=threads, rule=WindowRule(warmup_runs, window_runs, 3, stable_within, max_windows),
            batches=_batch_list(batches, "--batches"), targets=names, packages_root=out,
            compile=compile_model)
        progress = (lambda message: console.print(f"[dim]bench:[/] {escape(message)}", highlight=False)) \
            if console else (lambda _: None)
        directory = report_dir or out / "bench"
        check_output_root(directory)  # before minutes of measuring
        report = run_bench(settings, progress)
        try:
            written = {"report": str(write_atomically(directory / "bench.json", json.dumps(report, indent=2) + "\n"))}
            if not no_plots:
                families = [entry.load() for entry in FAMILIES]
                published = {v: family.published(v) for family in families for v in family.variants}
                written |= {name: str(path) for name, path in write_plots(report, directory, published).items()}
        except OSError as exc:  # a full disk after minutes of measuring: exit 4 naming the cause, no traceback
            raise write_failure(exc) or OutputError(f"--report-dir {directory}: cannot write: {exc}") from None
        return report, written

    report, written = run_guarded(as_json, work)
    if as_json:
        json_out(report | {"written": written})
    if console:
        console.print(bench_table(report))
        sweep = sweep_table(report)
        if sweep is not None:
            console.print(sweep)
        for variant in report["variants"]:
            for what, why in variant["not_measured"].items():
                console.print(f"[yellow]not measured[/] {variant['variant']} {escape(what)}: {escape(why)}",
                              highlight=False)
        console.print("written: " + ", ".join(escape(p) for p in written.values()), highlight=False)
