"""Package signatures: OpenSSF model signing (the ``model-signing`` library; OMS format, a Sigstore bundle).

The signature is the file ``model.sig`` (``SIGNATURE_FILE``) inside the package directory. It covers every other
file of the package, ``manifest.json`` and the provenance statement included (``model.sig`` is the only path
left out), so it is made last: after the export, after ``efexport provenance``. A bundle carries it under the
same name, and the reference command line verifies it as it is::

    model_signing verify key PKG --signature PKG/model.sig --public_key PUB.pem --ignore-paths PKG/model.sig

(``--ignore-paths`` is redundant there: the reference CLI leaves the signature file out by itself, and the
signature records ``model.sig`` as its one ignored path.)

Three ways to sign (``sign_package``): an elliptic-curve private key (P-256, P-384 or P-521; offline), a key
with its X.509 signing certificate and chain, or Sigstore keyless signing (an OIDC identity: the GitHub Actions
workflow's in CI; needs the network). The model_signing library is imported inside the functions only, so the
command line stays light.

Public API (what verify, bundle, publish and pull use)::

    SIGNATURE_FILE = "model.sig"; PROVENANCE_FILE = "provenance.intoto.json"; UNLISTED_FILES (both)
    class SignatureKind(StrEnum): KEY, CERTIFICATE, SIGSTORE
    @dataclass Trust(trusted_keys=(), identity=None, issuer=None, certificate_chain=(), require_signature=False)
        .given -> bool                     a signer must be trusted (any trust material was given)
        .check() -> None                   UsageError (exit 2) for half a keyless pair, unreadable trust files
    @dataclass SignatureReport             present, kind, signer, verified, trusted_by, problems, covered, status
        .passed -> bool                    no problems
        .status -> "unsigned" | "verified" | "unverified" | "invalid"
        .to_dict() -> dict                 the ``signature`` field of verify's --json
    sign_package(package_dir, *, key=None, password=None, certificate=None, certificate_chain=(),
                 sigstore=False, identity_token=None, staging=False) -> SignatureReport
    read_signature(path) -> SignatureReport            who signed, without trust (a directory or a bundle .zip)
    check_signature(package_dir, trust) -> SignatureReport   who signed, every file against the signature,
                                                        and, with trust, the signature itself
    key_fingerprint(public_key_pem: Path) -> str        "sha256:..." as ``SignatureReport.signer`` names a key
    package_file_problems(package_dir) -> list[str]    files that differ from the manifest (sign refuses them)

The whole check of a package directory or bundle with trust options is ``exporter.verify.verify_package(path,
threads, latency, trust)``: its report's ``signature`` is ``check_signature``'s ``to_dict()``.

Who signed (``signer``), readable without any trust material: for a key, ``sha256:<hex>``, the sha256 of the
public key's PEM SubjectPublicKeyInfo (the key hint model_signing records in the signature, so the one
fingerprint that can be read back without the key; ``sha256sum PUB.pem`` of a standard PEM file gives the same
hex); for a certificate, its subject (RFC 4514); for Sigstore, the certificate's identity (its subject
alternative name: a workflow URL or an e-mail address) and OIDC issuer. Without trust the report says
``unverified``: the files are still compared with the digests the signature lists (a changed byte is named),
but nothing proves who made it. With trust (``Trust``) the signature must verify: with one of the trusted
public keys, for the identity and issuer (Sigstore's public-good instance, so the network), or up to the
certificate chain. A bundle's folder name plays no part: model_signing compares files, not the model's name.

The verdict on a trusted signature is model_signing's own (``verifying.Config().verify``: the signature, then its
manifest against the files hashed again); its mismatch message names files as bytes reprs, so the files are named
from efexport's comparison of the signed digests with the files (``file_problems``), which also runs without
trust. Why not the DER SubjectPublicKeyInfo's sha256 as a key's fingerprint: a key signature carries only
model_signing's hint (sha256 of the PEM form), so a DER fingerprint could not be read without the key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

from efexport.exporter.errors import EfexportError, ExitCode, OutputError, UsageError, VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, sha256_of
from efexport.exporter.output import write_atomically

SIGNATURE_FILE = "model.sig"
PROVENANCE_FILE = "provenance.intoto.json"  # exporter/provenance.py writes it, before signing: the signature covers it
# Made after the manifest, so its file table cannot list them: verify and bundle allow them under these exact names.
UNLISTED_FILES = (SIGNATURE_FILE, PROVENANCE_FILE)
MAX_SIGNATURE_BYTES = 16 << 20  # a signature lists one digest per file: kilobytes; anything near this is not one
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model_signing (Sigstore's specs) accepts
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"  # DER UTF8String
_FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"  # raw string (deprecated, still written)


class SigningInputError(EfexportError):
    """A key, certificate or token that cannot sign (missing, unreadable, not an EC key), or a directory that is
    not a package (sign, provenance): bad input, exit 3."""

    exit_code = ExitCode.BAD_INPUT


class SigningError(EfexportError):
    """Signing itself failed (Sigstore unreachable, the OIDC token refused): a wrapped tool failed, exit 7."""

    exit_code = ExitCode.STAGE_FAILED


class SignatureKind(StrEnum):
    KEY = "key"  # an elliptic-curve key pair; the signature holds only the public key's fingerprint
    CERTIFICATE = "certificate"  # a key with an X.509 signing certificate (and its chain) in the signature
    SIGSTORE = "sigstore"  # keyless: a short-lived Fulcio certificate for an OIDC identity, logged in Rekor


@dataclass(frozen=True)
class Trust:
    """Who may have signed. Empty: a signature is read and its file digests checked, but nobody is trusted."""

    trusted_keys: tuple[Path, ...] = ()  # PEM public keys: a signature by any one of them is valid
    identity: str | None = None  # keyless: the certificate's identity (SAN), with issuer
    issuer: str | None = None  # keyless: the OIDC issuer, e.g. https://token.actions.githubusercontent.com
    certificate_chain: tuple[Path, ...] = ()  # certificate signatures: the chain up to a trusted root (PEM)
    require_signature: bool = False  # an unsigned package fails

    @property
    def given(self) -> bool:
        return bool(self.trusted_keys or self.identity or self.issuer or self.certificate_chain)

    @property
    def keyless(self) -> bool:
        return bool(self.identity and self.issuer)

    def check(self) -> None:
        """UsageError (exit 2) for trust options that cannot be used: half a keyless pair, a key file that is
        missing or not an EC public key, a chain file that holds no certificate."""
        if bool(self.identity) != bool(self.issuer):
            raise UsageError("--identity and --issuer go together (a keyless signature is trusted for an identity "
                             "at an issuer)")
        for key in self.trusted_keys:
            _load_public_key(key)
        for chain in self.certificate_chain:
            _load_certificates(chain, "--certificate-chain")

    def describe(self) -> str:
        parts = [f"trusted keys {', '.join(key_fingerprint(k) for k in self.trusted_keys)}"] if self.trusted_keys \
            else []
        if self.identity or self.issuer:
            parts.append(f"identity {self.identity} at issuer {self.issuer}")
        if self.certificate_chain:
            parts.append(f"certificate chain {', '.join(str(c) for c in self.certificate_chain)}")
        return "; ".join(parts) or "none"


@dataclass(frozen=True)
class SignatureReport:
    """What a package's signature says and whether it holds.

    ``present``: there is a ``model.sig``. ``kind``/``signer``: who signed (readable without trust; None when
    unsigned or unreadable). ``issuer``: the OIDC issuer of a Sigstore signer. ``verified``: the signature
    verified against the trust given (``trusted_by`` says which: a key's fingerprint, the identity, the chain).
    ``covered``: the files the signature lists. ``problems``: every reason it fails (files named)."""

    present: bool
    kind: SignatureKind | None = None
    signer: str | None = None
    issuer: str | None = None
    verified: bool = False
    trusted_by: str | None = None
    covered: int = 0
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if self.problems:
            return "invalid" if self.present else "unsigned"
        if not self.present:
            return "unsigned"
        return "verified" if self.verified else "unverified"

    def who(self) -> str:
        """The signer in words: 'key sha256:...', 'sigstore user@example.com (https://accounts...)'."""
        if not self.present:
            return "unsigned"
        if self.kind is None:
            return "unreadable signature"
        issuer = f" ({self.issuer})" if self.issuer else ""
        return f"{self.kind} {self.signer}{issuer}"

    def to_dict(self) -> dict:
        return {"status": self.status, "present": self.present, "kind": None if self.kind is None else str(self.kind),
                "signer": self.signer, "issuer": self.issuer, "verified": self.verified,
                "trusted_by": self.trusted_by, "files_covered": self.covered, "problems": list(self.problems)}


# ---- keys and certificates ----------------------------------------------------------------------------------------


def _read(path: Path, what: str, error: type[EfexportError]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{what} {path}: a directory, not a PEM file") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None


def _check_curve(key, what: str, path: Path, error: type[EfexportError]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "")
        raise error(f"{what} {path}: {kind or 'this'} is not an elliptic-curve key; model signing takes EC keys "
                    f"({', '.join(SUPPORTED_CURVES)})")
    if key.curve.name not in SUPPORTED_CURVES:
        raise error(f"{what} {path}: curve {key.curve.name} is not supported; use one of "
                    f"{', '.join(SUPPORTED_CURVES)}")


def _load_private_key(path: Path, password: str | None):
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "--key", SigningInputError)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password is not None else None)
    except TypeError as exc:  # encrypted without a password, or a password for an unencrypted key
        raise SigningInputError(f"--key {path}: {exc} (--password-env names the variable holding it)") from None
    except ValueError as exc:
        text = str(exc)
        if "password" in text.lower() or "decrypt" in text.lower():
            raise SigningInputError(f"--key {path}: wrong password or damaged key ({text})") from None
        raise SigningInputError(f"--key {path}: not a PEM private key ({text.splitlines()[0] if text else exc!r})") \
            from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and such
        raise SigningInputError(f"--key {path}: cannot load the private key: {type(exc).__name__}: {exc}") from None
    _check_curve(key, "--key", path, SigningInputError)
    return key


def _load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "--trusted-key", UsageError)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:
        hint = " (that is a private key: pass its public half)" if b"PRIVATE KEY" in data else ""
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--trusted-key {path}: not a PEM public key{hint}: {why}") from None
    _check_curve(key, "--trusted-key", path, UsageError)
    return key


def _load_certificates(path: Path, what: str, error: type[EfexportError] = UsageError) -> list:
    from cryptography import x509

    data = _read(path, what, error)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except Exception as exc:
        raise error(f"{what} {path}: not PEM certificates: {exc}") from None
    return certificates


def _pem_fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def key_fingerprint(public_key_pem: Path) -> str:
    """``sha256:<hex>`` of a PEM public key (or of a private key's public half), as a signature names its key:
    the sha256 of the PEM SubjectPublicKeyInfo, model_signing's key hint. UsageError when it is not an EC key."""
    from cryptography.hazmat.primitives import serialization

    data = _read(public_key_pem, "key", UsageError)
    if b"PRIVATE KEY" in data:
        try:
            return _pem_fingerprint(serialization.load_pem_private_key(data, None).public_key())
        except Exception as exc:
            raise UsageError(f"{public_key_pem}: cannot read the key: {exc}") from None
    return _pem_fingerprint(_load_public_key(public_key_pem))


# ---- signing --------------------------------------------------------------------------------------------------------


def _hashing_config():
    import model_signing.hashing

    # every file but the signature: .git* paths too (model_signing would leave them out by default)
    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def package_file_problems(package_dir: Path) -> list[str]:
    """Why ``package_dir`` should not be signed as it is: files that differ from its manifest's file table (the
    signature and the provenance statement aside). VerifyError when it is not a package or its manifest is
    broken."""
    from efexport.exporter.manifest import file_table
    from efexport.exporter.manifest_schema import load_manifest

    manifest = load_manifest(package_dir)  # VerifyError when not a package or the manifest is broken
    present = {name: entry["sha256"] for name, entry in file_table(package_dir).items() if name not in UNLISTED_FILES}
    recorded = {name: entry.sha256 for name, entry in manifest.files.items()}
    problems = [f"missing file {name}" for name in recorded if name not in present]
    problems += [f"unexpected file {name} (not in the manifest)" for name in present if name not in recorded]
    problems += [f"{name}: sha256 differs from the manifest (modified?)" for name in recorded
                 if name in present and present[name] != recorded[name]]
    return problems


def sign_package(package_dir: Path, *, key: Path | None = None, password: str | None = None,
                 certificate: Path | None = None, certificate_chain: tuple[Path, ...] = (),
                 sigstore: bool = False, identity_token: str | None = None,
                 staging: bool = False) -> SignatureReport:
    """Sign the package directory ``package_dir``: write ``model.sig`` (atomically; an old one is replaced).

    With ``key`` alone: key-based, offline. With ``key`` and ``certificate`` (+ ``certificate_chain``): the
    certificate and chain go into the signature. With ``sigstore``: keyless (Fulcio certificate for the OIDC
    identity of ``identity_token``, or the ambient one, e.g. GitHub Actions with ``id-token: write``; Rekor
    log entry), which needs the network. The package must be one (a manifest.json) whose files match its
    manifest (VerifyError, exit 6, naming them). Returns what ``read_signature`` reads back."""
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise SigningInputError(f"{package_dir}: no such package directory (sign takes a package directory; "
                                "bundle it after signing)")
    if not (package_dir / MANIFEST_FILE).is_file():
        raise SigningInputError(f"{package_dir}: not a package: no {MANIFEST_FILE}")
    if sigstore == (key is not None):
        raise UsageError("sign with --key PRIVATE.pem (and optionally --certificate) or with --sigstore, not both "
                         "or neither")
    if certificate is None and certificate_chain:
        raise UsageError("--certificate-chain goes with --certificate")
    if certificate is not None and not certificate_chain:  # model_signing 1.1.1 fails on an empty chain
        raise UsageError("--certificate needs --certificate-chain: the certificates that issued it, up to the root "
                         "(at least one)")
    problems = package_file_problems(package_dir)
    if problems:
        raise VerifyError(f"{package_dir}: will not sign a package whose files differ from its manifest: "
                          + "; ".join(problems[:5]))
    import model_signing.signing

    config = model_signing.signing.Config().set_hashing_config(_hashing_config())
    if key is not None:
        _load_private_key(key, password)  # clear errors before the library's
        if certificate is None:
            # model_signing 1.1.1 declares the password a str but hands it to cryptography, which takes bytes
            config.use_elliptic_key_signer(private_key=key, password=password.encode() if password else None)
        else:
            if password is not None:  # model_signing 1.1.1's certificate signer loads the key without one
                raise SigningInputError(f"--key {key}: an encrypted key cannot sign with --certificate "
                                        "(model_signing's certificate signer takes no password); decrypt it first")
            own = _load_certificates(certificate, "--certificate", SigningInputError)
            if not own:
                raise SigningInputError(f"--certificate {certificate}: holds no certificate")
            for chain in certificate_chain:
                _load_certificates(chain, "--certificate-chain", SigningInputError)
            try:
                config.use_certificate_signer(private_key=key, signing_certificate=certificate,
                                              certificate_chain=list(certificate_chain))
            except ValueError as exc:  # the certificate is not the key's
                raise SigningInputError(f"--certificate {certificate}: {exc}") from None
    else:
        try:  # fetches Sigstore's trust configuration: the network
            config.use_sigstore_signer(use_ambient_credentials=identity_token is None,
                                       identity_token=identity_token, use_staging=staging)
        except Exception as exc:
            raise SigningError(f"Sigstore signing cannot start (it needs the network): {type(exc).__name__}: "
                               f"{exc}") from None
    with tempfile.TemporaryDirectory(prefix="efexport-sign-") as scratch:
        written = Path(scratch) / SIGNATURE_FILE  # outside the package: nothing half-written is hashed or left
        try:
            config.sign(package_dir, written)
        except EfexportError:
            raise
        except OSError as exc:
            raise OutputError(f"{package_dir}: cannot read the package to sign it: {exc}") from None
        except Exception as exc:  # Sigstore: no token, network, refused identity
            raise SigningError(f"signing failed: {type(exc).__name__}: {exc}") from None
        try:
            write_atomically(package_dir / SIGNATURE_FILE, written.read_bytes())
        except OSError as exc:
            raise OutputError(f"cannot write {package_dir / SIGNATURE_FILE}: {exc.strerror or exc}") from None
    return read_signature(package_dir)


# ---- reading a signature -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    """A signature file read without trust: its kind and signer, and the files and digests it lists."""

    kind: SignatureKind
    signer: str
    issuer: str | None
    digests: dict[str, str]  # path -> sha256 hex
    ignored: tuple[str, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)


def _der_utf8(value: bytes) -> str:
    """A DER UTF8String's text (Fulcio's v2 issuer extension); the raw bytes when it is not one."""
    if len(value) >= 2 and value[0] == 0x0C:
        length, start = value[1], 2
        if length & 0x80:
            count = length & 0x7F
            length, start = int.from_bytes(value[2:2 + count], "big"), 2 + count
        return value[start:start + length].decode("utf-8", "replace")
    return value.decode("utf-8", "replace")


def _certificate_identity(der: bytes) -> tuple[str, str | None]:
    """(identity, issuer) of a Fulcio certificate: its subject alternative name and OIDC issuer extension."""
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    identity = None
    with contextlib.suppress(x509.ExtensionNotFound):
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [*names.get_values_for_type(x509.UniformResourceIdentifier),
                 *names.get_values_for_type(x509.RFC822Name)]
        identity = found[0] if found else None
    issuer = None
    for oid, decode in ((_FULCIO_ISSUER_V2, _der_utf8), (_FULCIO_ISSUER_V1, lambda v: v.decode("utf-8", "replace"))):
        with contextlib.suppress(x509.ExtensionNotFound):
            issuer = decode(certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value.value)
            break
    return identity or certificate.subject.rfc4514_string() or "(no identity)", issuer


def _parse(data: bytes) -> _Parsed:
    """Read a signature file without verifying it. ValueError (a message for the user) when it is not one."""
    from cryptography import x509

    try:
        bundle = json.loads(data)
        material = bundle["verificationMaterial"]
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a model signature (Sigstore bundle with a DSSE envelope): {type(exc).__name__}: "
                         f"{exc}") from None
    if not isinstance(material, dict) or not isinstance(statement, dict):
        raise ValueError("not a model signature: malformed bundle")
    if "publicKey" in material:
        hint = (material.get("publicKey") or {}).get("hint")
        kind, signer, issuer = SignatureKind.KEY, (f"sha256:{hint}" if hint else "unknown key (no key hint)"), None
    elif "x509CertificateChain" in material and material.get("tlogEntries"):  # an older Sigstore bundle (v0.1/0.2)
        try:
            raw = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
            identity, issuer = _certificate_identity(base64.b64decode(raw))
        except Exception as exc:
            raise ValueError(f"unreadable Sigstore certificate: {type(exc).__name__}: {exc}") from None
        kind, signer = SignatureKind.SIGSTORE, identity
    elif "x509CertificateChain" in material:
        try:
            raw = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
            subject = x509.load_der_x509_certificate(base64.b64decode(raw)).subject.rfc4514_string()
        except Exception as exc:
            raise ValueError(f"unreadable signing certificate: {type(exc).__name__}: {exc}") from None
        kind, signer, issuer = SignatureKind.CERTIFICATE, subject or "(empty subject)", None
    elif "certificate" in material:
        try:
            identity, issuer = _certificate_identity(base64.b64decode(material["certificate"]["rawBytes"]))
        except Exception as exc:
            raise ValueError(f"unreadable Sigstore certificate: {type(exc).__name__}: {exc}") from None
        kind, signer = SignatureKind.SIGSTORE, identity
    else:
        raise ValueError("no verification material (public key, certificate chain or certificate)")
    problems = []
    if statement.get("predicateType") != _PREDICATE_TYPE:
        problems.append(f"signature: predicate type {statement.get('predicateType')!r}, not {_PREDICATE_TYPE!r}")
    predicate = statement.get("predicate") or {}
    serialization = predicate.get("serialization") or {}
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        problems.append(f"signature: serialization {serialization.get('method')!r}/"
                        f"{serialization.get('hash_type')!r}; efexport checks file-by-file sha256 signatures only")
    digests: dict[str, str] = {}
    for resource in predicate.get("resources") or []:
        if isinstance(resource, dict) and isinstance(resource.get("name"), str):
            digests[resource["name"]] = str(resource.get("digest"))
    ignored = tuple(str(p) for p in serialization.get("ignore_paths") or ())
    return _Parsed(kind, signer, issuer, digests, ignored, tuple(problems))


def _bundle_signature(bundle: Path) -> bytes | None:
    """The bytes of ``<top>/model.sig`` in a bundle, or None when it has none (members are not extracted)."""
    try:
        with zipfile.ZipFile(bundle) as archive:
            names = archive.namelist()
            tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
            if len(tops) != 1:
                raise VerifyError(f"{bundle}: not an efexport bundle: expected one top folder")
            member = f"{tops.pop()}/{SIGNATURE_FILE}"
            if member not in names:
                return None
            info = archive.getinfo(member)
            if info.file_size > MAX_SIGNATURE_BYTES:
                raise VerifyError(f"{bundle}: {member}: {info.file_size} bytes, not a signature")
            return archive.read(member)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise VerifyError(f"{bundle}: not a zip bundle ({exc})") from None


def _signature_bytes(path: Path) -> bytes | None:
    path = Path(path)
    if path.is_file() and path.suffix == ".zip":
        return _bundle_signature(path)
    if not path.is_dir():
        raise VerifyError(f"{path}: no such package directory or bundle")
    signature = path / SIGNATURE_FILE
    if not signature.exists():
        return None
    if not signature.is_file():
        raise VerifyError(f"{signature}: not a file")
    if signature.stat().st_size > MAX_SIGNATURE_BYTES:
        raise VerifyError(f"{signature}: {signature.stat().st_size} bytes, not a signature")
    return signature.read_bytes()


def read_signature(path: Path) -> SignatureReport:
    """Who signed the package directory or bundle ``path``, without trust material and without checking
    anything: ``present`` False when unsigned; ``verified`` always False. An unreadable signature is reported
    (``problems``), not raised; a path that is neither a directory nor a bundle raises VerifyError."""
    data = _signature_bytes(Path(path))
    if data is None:
        return SignatureReport(present=False)
    try:
        parsed = _parse(data)
    except ValueError as exc:
        return SignatureReport(present=True, problems=(f"{SIGNATURE_FILE}: {exc}",))
    return SignatureReport(True, parsed.kind, parsed.signer, parsed.issuer, covered=len(parsed.digests),
                           problems=parsed.problems)


# ---- verifying -----------------------------------------------------------------------------------------------------


def _present_files(package_dir: Path) -> dict[str, str]:
    """sha256 of every file under the package directory but the signature (manifest.json included)."""
    return {p.relative_to(package_dir).as_posix(): sha256_of(p)
            for p in sorted(package_dir.rglob("*")) if p.is_file() and p.relative_to(package_dir).as_posix()
            != SIGNATURE_FILE}


def file_problems(package_dir: Path, signed: dict[str, str]) -> list[str]:
    """Every file that differs from the digests a signature lists, by name."""
    present = _present_files(package_dir)
    problems = [f"{name}: changed since it was signed (sha256 differs from {SIGNATURE_FILE})"
                for name, digest in signed.items() if name in present and present[name] != digest]
    problems += [f"{name}: signed but missing" for name in signed if name not in present]
    problems += [f"{name}: not covered by the signature (added after signing?)" for name in present
                 if name not in signed]
    return problems


def _library_verify(config, package_dir: Path) -> str | None:
    """Run model_signing's verification; None when it passes, else why not (its manifest diff is left to
    ``file_problems``, which names the files)."""
    try:
        config.set_hashing_config(_hashing_config()).verify(package_dir, package_dir / SIGNATURE_FILE)
    except Exception as exc:
        text = str(exc)
        if text.startswith("Signature mismatch"):  # authentic signature, files differ: file_problems names them
            return "files differ from the signature"
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


def _verify_with_key(package_dir: Path, parsed: _Parsed, trust: Trust) -> tuple[str | None, str | None]:
    """(trusted_by, problem): one trusted key whose fingerprint the signature names, and its verification."""
    import model_signing.verifying

    fingerprints = {key_fingerprint(k): k for k in trust.trusted_keys}
    if parsed.signer in fingerprints:
        candidates = [(parsed.signer, fingerprints[parsed.signer])]
    elif parsed.signer.startswith("sha256:"):
        return None, (f"{SIGNATURE_FILE}: signed by key {parsed.signer}, which is not a trusted key "
                      f"({', '.join(fingerprints)})")
    else:  # an old signature without a key hint: try each key
        candidates = list(fingerprints.items())
    why = "no trusted key"
    for fingerprint, key in candidates:
        why = _library_verify(model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key),
                              package_dir)
        if why is None or why == "files differ from the signature":
            return fingerprint, None if why is None else why
    return None, f"{SIGNATURE_FILE}: does not verify with the trusted key(s): {why}"


def check_signature(package_dir: Path, trust: Trust = Trust()) -> SignatureReport:
    """Check the signature of the package directory ``package_dir``.

    Unsigned: a problem only with ``trust.require_signature`` or trust material (``trust.given``: a trusted
    signer is required). Signed: who signed; every file against the digests the signature lists (a changed,
    missing or added file is named); with trust material, the signature itself (model_signing's verifiers:
    one of the trusted keys, the Sigstore identity and issuer, or the certificate chain). A signature that does
    not match the trust given is a problem naming the signer."""
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise VerifyError(f"{package_dir}: not a package directory (a bundle is checked by verify_package, which "
                          "extracts it first; read_signature reads who signed it)")
    data = _signature_bytes(package_dir)
    if data is None:
        if trust.require_signature or trust.given:
            why = "--require-signature" if trust.require_signature else \
                f"a trusted signer is required ({trust.describe()})"
            return SignatureReport(False, problems=(f"unsigned: no {SIGNATURE_FILE} in the package, and {why}",))
        return SignatureReport(False)
    try:
        parsed = _parse(data)
    except ValueError as exc:
        return SignatureReport(True, problems=(f"{SIGNATURE_FILE}: {exc}",))
    problems = list(parsed.problems)
    if set(parsed.ignored) - {SIGNATURE_FILE}:
        problems.append(f"{SIGNATURE_FILE}: leaves out {', '.join(sorted(set(parsed.ignored) - {SIGNATURE_FILE}))}; "
                        f"an efexport signature covers every file but {SIGNATURE_FILE}")
    changed = file_problems(package_dir, parsed.digests)
    problems += changed
    trusted_by = None
    if trust.given:
        trusted_by, problem = _verify_trusted(package_dir, parsed, trust)
        if problem == "files differ from the signature":  # model_signing's manifest diff: ``changed`` names them
            problem = None if changed else f"{SIGNATURE_FILE}: model_signing finds files that differ from it"
        if problem:
            problems.append(problem)
    verified = trusted_by is not None and not problems
    return SignatureReport(True, parsed.kind, parsed.signer, parsed.issuer, verified, trusted_by,
                           len(parsed.digests), tuple(problems))


def _verify_trusted(package_dir: Path, parsed: _Parsed, trust: Trust) -> tuple[str | None, str | None]:
    import model_signing.verifying

    if parsed.kind is SignatureKind.KEY:
        if not trust.trusted_keys:
            return None, (f"{SIGNATURE_FILE}: signed with key {parsed.signer}; trust it with --trusted-key "
                          f"(given: {trust.describe()})")
        return _verify_with_key(package_dir, parsed, trust)
    if parsed.kind is SignatureKind.SIGSTORE:
        if not trust.keyless:
            return None, (f"{SIGNATURE_FILE}: a keyless signature by {parsed.signer} ({parsed.issuer}); trust it "
                          f"with --identity and --issuer (given: {trust.describe()})")
        if (parsed.signer, parsed.issuer) != (trust.identity, trust.issuer):
            return None, (f"{SIGNATURE_FILE}: signed by {parsed.signer} ({parsed.issuer}), not by the trusted "
                          f"{trust.identity} ({trust.issuer})")
        try:  # fetches Sigstore's trust root: the network
            config = model_signing.verifying.Config().use_sigstore_verifier(identity=trust.identity,
                                                                            oidc_issuer=trust.issuer)
        except Exception as exc:
            return None, (f"{SIGNATURE_FILE}: cannot verify a keyless signature here (Sigstore's trust root needs "
                          f"the network): {type(exc).__name__}: {exc}")
        why = _library_verify(config, package_dir)
        trusted_by = f"identity {trust.identity} at {trust.issuer}"
    else:
        if not trust.certificate_chain:
            return None, (f"{SIGNATURE_FILE}: signed with the certificate of {parsed.signer}; trust it with "
                          f"--certificate-chain (given: {trust.describe()})")
        config = model_signing.verifying.Config().use_certificate_verifier(
            certificate_chain=list(trust.certificate_chain))
        why = _library_verify(config, package_dir)
        trusted_by = f"certificate chain {', '.join(str(c) for c in trust.certificate_chain)}"
    if why is None or why == "files differ from the signature":
        return trusted_by, why
    return None, f"{SIGNATURE_FILE}: does not verify ({trusted_by}): {why}"


__all__ = ["PROVENANCE_FILE", "SIGNATURE_FILE", "UNLISTED_FILES", "SignatureKind", "SignatureReport",
           "SigningError", "SigningInputError", "Trust", "check_signature", "file_problems", "key_fingerprint",
           "package_file_problems", "read_signature", "sign_package"]
