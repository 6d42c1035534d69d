"""``efexport publish``: a verified package into a registry (a directory or S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import json_out, run_guarded, stderr
from efexport.exporter.cli.signature import switch, with_options
from efexport.exporter.cli.tables import latency_comparison_table
from efexport.exporter.targets import TARGETS


def publish_command(
    path: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json) or its bundle "
                                              "(.zip).")],
    to: Annotated[str, typer.Option("--to", help="Registry: a local directory or s3://BUCKET/PREFIX.",
                                    show_default=False)],
    version: Annotated[str | None, typer.Option("--version", help="Version to publish under (default: the efexport "
                                                "version recorded in the package's manifest).",
                                                show_default=False)] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="Endpoint of an S3-compatible store "
                                                     "such as MinIO (default: $AWS_ENDPOINT_URL, else AWS).",
                                                     show_default=False)] = None,
    evidence: Annotated[list[Path] | None, typer.Option("--evidence", help="A JSON file stored with the package "
                                                        "under evidence/ and listed in the index (repeatable).",
                                                        show_default=False)] = None,
    allow_random_weights: Annotated[bool, typer.Option("--allow-random-weights", help="Publish a package with "
                                                       "random-init weights (refused otherwise).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a different package already published under "
                                        "this version.")] = False,
    trusted_key: options.TrustedKeys = None,
    identity: options.Identity = None,
    issuer: options.Issuer = None,
    certificate_chain: options.CertificateChain = None,
    require_signature: options.RequireSignature = False,
    threads: options.Threads = 2,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
    **allowed: bool,
) -> None:
    """Verify a package and publish it to a registry: bundle, manifest, model card and evidence under
    MODEL/VERSION/TARGET/SHA256-PREFIX/, listed in index.json once every upload is read back and matches.

    A signed package's signature (model.sig) is kept inside the bundle and beside it, and the index records the
    signer; a signature present is always checked. --require-signature refuses an unsigned package; --trusted-key
    (or --identity with --issuer, or --certificate-chain) requires a valid signature by a trusted signer.

    Publishing the same package again changes nothing. Exit code 10: refused (does not verify, a bad or missing
    signature, a gate failed, random weights, the version holds a different package); 11: the destination failed
    (unreachable, denied, an upload did not verify).
    """
    from efexport.exporter.publish import open_store, publish
    from efexport.exporter.signing import Trust

    def work() -> Any:
        trust = Trust(trusted_keys=tuple(trusted_key or ()), identity=identity, issuer=issuer,
                      certificate_chain=tuple(certificate_chain or ()), require_signature=require_signature)
        trust.check()
        store = open_store(to, endpoint_url)
        return publish(path, store, version, allow_random_weights=allow_random_weights, force=force,
                       evidence=evidence or (), threads=threads, trust=trust, **allowed)

    result = run_guarded(as_json, work)
    console = stderr(quiet)
    if as_json:
        json_out(result.to_dict())
    if console:
        console.print(f"[green]{result.status}[/] {result.model} {result.version} {result.target} -> "
                      f"{escape(result.destination)} (sha256 {result.sha256[:12]})", highlight=False)
        signature = result.signature
        if signature:
            trusted = f"verified, trusted by {signature['trusted_by']}" if signature.get("verified") else \
                "files match it; signer not checked against trust"
            issuer = f" ({signature['issuer']})" if signature.get("issuer") else ""
            console.print(f"  signed: {signature['kind']} {escape(str(signature['signer']))}{escape(issuer)} "
                          f"({trusted}); stored as {escape(signature['key'])}", highlight=False)
        else:
            console.print("  [yellow]unsigned[/] (pass --require-signature to refuse unsigned packages)",
                          highlight=False)
        if result.latency_comparison:
            console.print(latency_comparison_table(list(result.latency_comparison)))


publish_command = with_options(publish_command, [
    switch(spec.publish_allowance.param, spec.publish_allowance.flag, spec.publish_allowance.help)
    for spec in TARGETS.values() if spec.publish_allowance])
