"""``efexport provenance``: write a package's provenance statement (in-toto / SLSA; exporter/provenance.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import json_out, run_guarded, stderr


def provenance_command(
    package: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json), not yet "
                                                 "signed.")],
    checkpoint_url: Annotated[str | None, typer.Option("--checkpoint-url", show_default=False,
                                                       help="Where the checkpoint was downloaded from (its sha256 "
                                                            "comes from the manifest).")] = None,
    builder_id: Annotated[str | None, typer.Option("--builder-id", show_default=False,
                                                   help="The builder's id (a URI) outside GitHub Actions (there: "
                                                        "the run's URL). Default: urn:efexport:local:HOST.")] = None,
    started_on: Annotated[str | None, typer.Option("--started-on", show_default=False,
                                                   help="When the build started (RFC 3339, e.g. the job's start "
                                                        "time); omitted when not given.")] = None,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Write PACKAGE/provenance.intoto.json: an in-toto Statement v1 with SLSA provenance v1 (subjects: every
    file of the package with its sha256; the checkpoint, recipe, efexport version and commit; the builder, from
    GitHub Actions' environment when set). Write it before efexport sign: the signature then covers it."""
    from efexport.exporter.provenance import check_provenance, write_provenance

    def work() -> Any:
        if started_on is not None:
            from datetime import datetime

            from efexport.exporter.errors import UsageError

            try:
                datetime.fromisoformat(started_on)
            except ValueError:
                raise UsageError(f"--started-on {started_on!r}: not an RFC 3339 time "
                                 "(e.g. 2026-01-31T12:00:00Z)") from None
        path = write_provenance(package, checkpoint_url=checkpoint_url, builder_id=builder_id,
                                started_on=started_on)
        return path, check_provenance(package)

    path, report = run_guarded(as_json, work)
    if as_json:
        json_out({"path": str(path), **report.to_dict()})
    console = stderr(quiet)
    if console:
        console.print(f"[green]provenance[/] {escape(str(path))}: {report.subjects} subjects, builder "
                      f"{escape(str(report.builder))}", highlight=False)
