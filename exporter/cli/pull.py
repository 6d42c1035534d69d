"""``efexport pull``: a published package out of a registry (a directory or S3), checked before it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import json_out, run_guarded, stderr


def pull_command(
    registry: Annotated[str, typer.Argument(help="The registry: a local directory or s3://BUCKET/PREFIX.")],
    model: Annotated[str, typer.Argument(help="The model, e.g. efficientformer-l3.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The published target, e.g. onnx-fp32 or "
                                                               "coreml-fp16.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the package goes: OUT/<package name>/.",
                                      show_default=False)],
    version: Annotated[str, typer.Option("--version", help="The version, or 'latest': the highest version "
                                                           "published with this target.")] = "latest",
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="Endpoint of an S3-compatible store "
                                                     "such as MinIO (default: $AWS_ENDPOINT_URL, else AWS).",
                                                     show_default=False)] = None,
    trusted_key: options.TrustedKeys = None,
    identity: options.Identity = None,
    issuer: options.Issuer = None,
    certificate_chain: options.CertificateChain = None,
    require_signature: options.RequireSignature = False,
    force: options.Force = False,
    threads: options.Threads = 2,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Download a published package, check it, and only then install it as OUT/<package name>/.

    Checked in order: the bundle's sha256 against the index (and its .sha256 object), the signature (with
    --trusted-key, or --identity and --issuer, a valid signature from a trusted signer is required; without them a
    present signature is still verified and its signer shown), and the package's own verification (schema, every
    file's sha256, parity on the runtimes present here). Anything refused leaves nothing in OUT. Exit codes: 6
    refused (tampered bundle, bad or missing signature, does not verify), 12 the model, version or target is not
    in the registry (the message names what is), 11 the registry failed, 4 OUT/<package> exists (--force replaces
    it atomically).
    """
    from efexport.exporter.publish import open_store
    from efexport.exporter.pull import Trust, pull

    console = stderr(quiet)

    def progress(message: str) -> None:
        if console:
            console.print(f"[dim]{escape(message)}[/]", highlight=False)

    def work() -> Any:
        trust = Trust(trusted_keys=tuple(trusted_key or ()), identity=identity, issuer=issuer,
                      certificate_chain=tuple(certificate_chain or ()), require_signature=require_signature)
        store = open_store(registry, endpoint_url, create=False, option="REGISTRY")
        return pull(store, model, version, target, out, trust=trust, force=force, threads=threads,
                    progress=progress)

    result = run_guarded(as_json, work)
    if as_json:
        json_out(result.to_dict())
    if console:
        asked = " (latest)" if result.requested_version == "latest" else ""
        console.print(f"[green]{result.status}[/] {result.model} {result.version}{asked} {result.target} -> "
                      f"{escape(result.path)} (sha256 {result.sha256[:12]})", highlight=False)
        console.print(f"  signature: {escape(signature_line(result.signature))}", highlight=False)
        for statement in result.provenance:
            console.print(f"  provenance ({statement['source']}): {escape(provenance_line(statement))}",
                          highlight=False)
        if not result.provenance:
            console.print("  provenance: none (no provenance.intoto.json in the package or the registry)",
                          highlight=False)
        check = result.verify
        parity = check.get("parity") or {}
        console.print(f"  verified: {check.get('files_checked')} files match the manifest; parity max abs "
                      f"{parity.get('max_abs', float('nan')):.2e}, min cosine "
                      f"{parity.get('min_cosine', float('nan')):.7f}", highlight=False)
        for backend, why in check.get("not_checked_here", {}).items():
            console.print(f"  [yellow]not checked here:[/] {backend}: {escape(why)}", highlight=False)


def signature_line(signature: dict) -> str:
    """The signature in words (``signing.SignatureReport.to_dict``)."""
    if not signature.get("present"):
        return "none (unsigned package)"
    issuer = f" ({signature['issuer']})" if signature.get("issuer") else ""
    who = f"{signature.get('kind')} {signature.get('signer')}{issuer}"
    if signature.get("verified"):
        return f"{who}: verified, trusted by {signature.get('trusted_by')}"
    return (f"{who}: files match the signature, but the signer was not checked against any trust (give "
            "--trusted-key, --identity/--issuer or --certificate-chain)")


def provenance_line(statement: dict) -> str:
    """A provenance statement in words (``provenance.ProvenanceReport.to_dict`` and the registry's copy)."""
    parts = [f"builder {statement.get('builder') or 'unknown'}"]
    inputs = statement.get("inputs") or {}
    for name in ("variant", "target", "precision"):
        if inputs.get(name):
            parts.append(f"{name} {inputs[name]}")
    for dependency in (statement.get("dependencies") or [])[:3]:
        digest = (dependency.get("digest") or {}).get("sha256", "")
        label = dependency.get("uri") or dependency.get("name") or "input"
        parts.append(f"input {label}" + (f" sha256 {digest[:12]}" if digest else ""))
    parts += [f"[{problem}]" for problem in statement.get("problems") or []]
    return "; ".join(parts)
