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
    trusted_keys: options.TrustedKeys = None,
    identity: options.Identity = None,
    issuer: options.Issuer = None,
    certificate_chain: options.CertificateChain = None,
    require_signature: options.RequireSignature = False,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Re-check a package or bundle anywhere: safe bundle members, the manifest against its schema, every file's
    sha256, the signature (model.sig: who signed; with --trusted-key, --identity/--issuer or --certificate-chain
    it must verify for them) and the provenance statement when present, then parity from reference_io.npz on
    every runtime of the target present on this machine. A changed byte of any signed file fails (exit 6), named."""
    from efexport.exporter.verify import Trust, verify_package

    trust = Trust(trusted_keys=tuple(trusted_keys or ()), identity=identity, issuer=issuer,
                  certificate_chain=tuple(certificate_chain or ()), require_signature=require_signature)
    report = run_guarded(as_json, lambda: verify_package(path, threads, latency, trust))
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
        _print_signature(console, report.signature)
        if report.provenance is not None:
            _print_provenance(console, report.provenance)
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


def _print_signature(console, signature: dict) -> None:
    """One line: unsigned, or who signed and against what it was verified."""
    status = signature["status"]
    if status == "unsigned" and not signature["problems"]:
        console.print("signature: [yellow]unsigned[/]", highlight=False)
        return
    if signature["kind"] is None:
        console.print(f"signature: [red]{status}[/]", highlight=False)
        return
    issuer = f" ({escape(signature['issuer'])})" if signature.get("issuer") else ""
    who = f"{signature['kind']} {escape(str(signature['signer']))}{issuer}"
    if status == "verified":
        console.print(f"signature: [green]verified[/], signed by {who}; trusted: "
                      f"{escape(str(signature['trusted_by']))}", highlight=False)
    elif status == "unverified":
        console.print(f"signature: [yellow]unverified[/] (no trust given: --trusted-key, --identity/--issuer or "
                      f"--certificate-chain), signed by {who}; {signature['files_covered']} files match it",
                      highlight=False)
    else:
        console.print(f"signature: [red]invalid[/], signed by {who}", highlight=False)


def _print_provenance(console, provenance: dict) -> None:
    inputs = provenance.get("inputs") or {}
    weights = inputs.get("weights") or {}
    source = (f"checkpoint {weights.get('file')} sha256 {str(weights.get('sha256'))[:12]}"
              + (f" from {weights['url']}" if weights.get("url") else "")) if weights.get("source") == "checkpoint" \
        else f"{weights.get('source', '?')} weights"
    efexport = next((d for d in provenance.get("dependencies") or [] if d.get("name") == "efexport"), {})
    commit = (efexport.get("digest") or {}).get("gitCommit")
    console.print(f"provenance: builder {escape(str(provenance.get('builder')))}; {inputs.get('variant')} "
                  f"{inputs.get('target')} {inputs.get('precision')}, {escape(source)}; efexport "
                  f"{(efexport.get('annotations') or {}).get('version', '?')}"
                  + (f" at {commit[:12]}" if commit else ""), highlight=False)
