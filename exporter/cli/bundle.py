"""``efexport bundle``: a verified package as one reproducible zip."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import deprecated, json_out, run_guarded
from efexport.exporter.errors import UsageError, VerifyError


def bundle_command(
    package: Annotated[Path, typer.Argument(help="A package directory, e.g. "
                                                 "artifacts/efficientformer-l3/coreml-fp16.")],
    bundle_dir: Annotated[Path, typer.Option("--bundle-dir", help="Where the bundle goes (as on efexport all).")] = \
        Path("artifacts/bundles"),
    threads: options.Threads = 2,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", hidden=True, show_default=False,
                                             help="Deprecated: --bundle-dir.")] = None,
) -> None:
    """Verify a package, then write it as one reproducible zip (same package, same bytes) with a sha256sum file:
    BUNDLE_DIR/MODEL-VARIANT-TARGET-PRECISION.zip and .zip.sha256."""
    if out is not None:  # --out is an output root everywhere else; here it was the bundle folder
        deprecated(f"efexport bundle --out {out}", "--bundle-dir")
        bundle_dir = out
    from efexport.exporter.bundle import is_bundle, write_bundle

    def work() -> Any:
        if is_bundle(package) and package.is_file():
            raise UsageError(f"{package} is a bundle already: efexport bundle takes a package directory "
                         "(efexport verify checks a bundle)")
        _verified_or_fail(package, threads)
        return write_bundle(package, bundle_dir)

    bundle = run_guarded(as_json, work)
    if as_json:
        json_out(bundle.to_dict())
    elif not quiet:
        Console(stderr=True).print(f"[green]bundled[/] {escape(str(bundle.path))} ({bundle.bytes:,} bytes, sha256 "
                                   f"{bundle.sha256})", highlight=False)


def _verified_or_fail(package: Path, threads: int) -> None:
    from efexport.exporter.verify import verify_package

    report = verify_package(package, threads)
    if not report.passed:
        raise VerifyError(f"{package} does not verify: " + "; ".join(report.problems[:5]))
