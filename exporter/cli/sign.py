"""``efexport sign``: sign a package directory (``model.sig``, OpenSSF model signing; exporter/signing.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import fail, json_out, run_guarded, stderr
from efexport.exporter.errors import UsageError


def sign_command(
    package: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json). Sign it "
                                                 "last: after efexport provenance, before efexport bundle.")],
    key: Annotated[Path | None, typer.Option("--key", help="Elliptic-curve private key (PEM; P-256, P-384 or "
                                                           "P-521): key-based signing, offline.",
                                             show_default=False)] = None,
    password_env: Annotated[str | None, typer.Option("--password-env", metavar="VAR", show_default=False,
                                                     help="The environment variable holding the password of an "
                                                          "encrypted --key (never on the command line).")] = None,
    certificate: Annotated[Path | None, typer.Option("--certificate", show_default=False,
                                                     help="With --key: the key's X.509 signing certificate (PEM), "
                                                          "carried in the signature.")] = None,
    certificate_chain: Annotated[list[Path] | None, typer.Option(
        "--certificate-chain", show_default=False,
        help="With --certificate (required): the certificates that issued it, up to the root (PEM; "
             "repeatable).")] = None,
    sigstore: Annotated[bool, typer.Option("--sigstore", help="Keyless signing with Sigstore for an OIDC "
                                                              "identity (GitHub Actions' with `id-token: write`, "
                                                              "else a browser login); needs the network.")] = False,
    identity_token_env: Annotated[str | None, typer.Option("--identity-token-env", metavar="VAR",
                                                           show_default=False,
                                                           help="With --sigstore: the environment variable holding "
                                                                "an OIDC identity token to sign with.")] = None,
    staging: Annotated[bool, typer.Option("--sigstore-staging", help="With --sigstore: Sigstore's staging "
                                                                     "instance (tests only).")] = False,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Sign a package: write PACKAGE/model.sig (an OpenSSF model signature, a Sigstore bundle) covering every other
    file of the package, manifest.json and provenance.intoto.json included. Re-signing replaces it. Exit 3: the
    key, certificate or package cannot be used; 6: the package's files differ from its manifest; 7: Sigstore
    signing failed."""
    from efexport.exporter.signing import sign_package

    def secret(variable: str | None, flag: str) -> str | None:
        if variable is None:
            return None
        if variable not in os.environ:
            raise UsageError(f"{flag} {variable}: no such environment variable")
        return os.environ[variable]

    def work() -> Any:
        if not sigstore and (identity_token_env or staging):
            raise UsageError("--identity-token-env and --sigstore-staging go with --sigstore")
        return sign_package(package, key=key, password=secret(password_env, "--password-env"),
                            certificate=certificate, certificate_chain=tuple(certificate_chain or ()),
                            sigstore=sigstore, identity_token=secret(identity_token_env, "--identity-token-env"),
                            staging=staging)

    if key is None and not sigstore:
        raise fail(UsageError("sign with --key PRIVATE.pem (key-based, offline) or --sigstore (keyless)"), as_json)
    report = run_guarded(as_json, work)
    if as_json:
        json_out({"path": str(package / "model.sig"), **report.to_dict()})
    console = stderr(quiet)
    if console:
        console.print(f"[green]signed[/] {escape(str(package))}: {report.covered} files, signer "
                      f"{escape(report.who())}", highlight=False)
