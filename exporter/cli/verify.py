"""``efexport verify``: re-check a package or bundle anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import fail, run_guarded, stderr
from efexport.exporter.errors import ExitCode


def verify_command(
    path: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json) or its bundle "
                                              "(.zip; its .sha256 beside it is checked too).")],
    threads: options.Threads = 2,
    latency: Annotated[bool, typer.Option("--latency", help="Also time every deployment runtime present here (e.g. "
                                                           "Core ML on macOS), in the manifests' schema.")] = False,
    report_file: Annotated[Path | None, typer.Option("--report", help="Write the verification report (JSON) to "
                                                     "this file.", show_default=False)] = None,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Re-check a package or bundle anywhere: safe bundle members, the manifest against its schema, every file's
    sha256, then parity from reference_io.npz on every runtime of the target present on this machine."""
    from efexport.exporter.verify import verify_package

    report = run_guarded(as_json, lambda: verify_package(path, threads, latency))
    document = json.dumps(report.to_dict(), indent=2)
    if report_file is not None:
        try:
            from efexport.exporter.output import write_atomically

            write_atomically(report_file, document + "\n")
        except OSError as exc:
            from efexport.exporter.errors import OutputError

            raise fail(OutputError(f"--report {report_file}: cannot write it: {exc.strerror or exc}"),
                        as_json) from None
    if as_json:
        print(document)
    console = stderr(quiet)
    if console:
        if report.passed:
            parity = report.parity
            console.print(f"[green]verified[/] {escape(str(path))}: {report.files_checked} files match the manifest; "
                          f"parity max abs {parity.max_abs:.2e}, min cosine {parity.min_cosine:.7f}", highlight=False)
        else:
            for problem in report.problems:
                console.print(f"[bold red]verify failed:[/] {escape(problem)}", highlight=False)
        for backend, why in report.not_checked_here.items():
            console.print(f"[yellow]not checked here:[/] {backend}: {escape(why)}", highlight=False)
        for backend, parity in report.runtime_parity.items():
            console.print(f"parity on {backend}: max abs {parity['max_abs']:.2e}, min cosine "
                          f"{parity['min_cosine']:.7f}", highlight=False)
        for entry in report.latency:
            stats = entry["stats_ms"]
            console.print(f"latency {entry['backend']} batch {entry['batch_size']}: p50 {stats['p50']:.2f} ms, "
                          f"p90 {stats['p90']:.2f} ms", highlight=False)
    if not report.passed:
        raise typer.Exit(int(ExitCode.VERIFY_FAILED))
