"""Package signatures (exporter/signing.py, efexport sign, efexport verify's trust options): keys and certificates
made here with ``cryptography``; the session's l1 ONNX package copied before anything is signed or changed.

Sigstore keyless signing needs the network and an OIDC token: only reading a keyless signature's identity (from
a certificate made here with Fulcio's extensions) and refusing one for another identity are tested.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from efexport.exporter.bundle import write_bundle
from efexport.exporter.errors import ExitCode, UsageError
from efexport.exporter.signing import (
    SIGNATURE_FILE,
    SignatureKind,
    SigningInputError,
    Trust,
    check_signature,
    key_fingerprint,
    read_signature,
    sign_package,
)
from efexport.exporter.verify import verify_package
from tests.helpers import run_cli
from tests.packages import exported_package

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once


def _write_key(folder: Path, name: str, curve: ec.EllipticCurve | None = None,
               password: bytes | None = None) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private = folder / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public = folder / f"{name}.pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public, _ = _write_key(folder, "signer")
    _, other_public, _ = _write_key(folder, "other", ec.SECP384R1())
    return {"private": private, "public": public, "other": other_public}


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_package("onnx", tmp_path_factory)[0]  # shared: copied before anything changes


@pytest.fixture(scope="module")
def signed(unsigned: Path, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package signed through the real command line."""
    package = tmp_path_factory.mktemp("signed") / unsigned.name
    shutil.copytree(unsigned, package)
    result = run_cli("sign", package, "--key", keys["private"], "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["signer"] == key_fingerprint(keys["public"])
    assert document["kind"] == "key" and document["files_covered"] == len(list(unsigned.iterdir()))
    assert (package / SIGNATURE_FILE).is_file()
    return package


def _copy(package: Path, tmp_path: Path) -> Path:
    copy = tmp_path / package.name
    shutil.copytree(package, copy)
    return copy


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ---- sign and verify through the command line ------------------------------------------------------------------


def test_verify_reports_the_signer_and_passes_with_the_trusted_key(signed: Path, keys: dict[str, Path]) -> None:
    result = run_cli("verify", signed, "--trusted-key", keys["other"], "--trusted-key", keys["public"], "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    fingerprint = key_fingerprint(keys["public"])
    assert report["passed"] is True
    assert report["signature"]["status"] == "verified"
    assert report["signature"]["signer"] == fingerprint and report["signature"]["trusted_by"] == fingerprint
    assert f"signature: verified, signed by key {fingerprint}" in result.stderr


def test_another_key_fails_with_exit_6_naming_the_signer(signed: Path, keys: dict[str, Path]) -> None:
    result = run_cli("verify", signed, "--trusted-key", keys["other"])
    assert result.returncode == ExitCode.VERIFY_FAILED
    assert f"signed by key {key_fingerprint(keys['public'])}, which is not a trusted key" in result.stderr


def test_require_signature_or_trust_refuses_an_unsigned_package(unsigned: Path, keys: dict[str, Path]) -> None:
    report = verify_package(unsigned, trust=Trust(require_signature=True))  # the command exits 6 on any problem
    assert not report.passed and report.signature["status"] == "unsigned"
    assert report.problems == ("unsigned: no model.sig in the package, and --require-signature",)
    report = check_signature(unsigned, Trust(trusted_keys=(keys["public"],)))
    assert report.problems == (f"unsigned: no model.sig in the package, and a trusted signer is required "
                               f"(trusted keys {key_fingerprint(keys['public'])})",)


def test_an_unsigned_package_still_passes_without_trust_options(unsigned: Path) -> None:
    report = verify_package(unsigned)
    assert report.passed, report.problems
    assert report.signature["status"] == "unsigned" and report.provenance is None


def test_a_bad_key_file_is_refused_clearly(unsigned: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    package = _copy(unsigned, tmp_path)
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    cases = {rsa_key: "is not an elliptic-curve key", garbage: "not a PEM private key",
             keys["public"]: "not a PEM private key", tmp_path / "missing.pem": "no such file"}
    result = run_cli("sign", package, "--key", rsa_key)
    assert result.returncode == ExitCode.BAD_INPUT and "is not an elliptic-curve key" in result.stderr
    for key, why in cases.items():
        with pytest.raises(SigningInputError, match=why):
            sign_package(package, key=key)
    assert not (package / SIGNATURE_FILE).exists()  # nothing written


def test_sign_refuses_a_directory_that_is_not_a_package(tmp_path: Path, keys: dict[str, Path]) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    result = run_cli("sign", tmp_path, "--key", keys["private"])
    assert result.returncode == ExitCode.BAD_INPUT and "not a package: no manifest.json" in result.stderr
    assert not (tmp_path / SIGNATURE_FILE).exists()


def test_the_reference_cli_verifies_our_signature(signed: Path, keys: dict[str, Path]) -> None:
    """model_signing's own command line, as the docs give it (1.1.1: ``verify key MODEL --signature --public_key``;
    it leaves the signature file out by itself, so --ignore-paths is redundant; provenance is signed, not ignored)."""
    command = [sys.executable, "-m", "model_signing", "verify", "key", str(signed), "--signature",
               str(signed / SIGNATURE_FILE), "--public_key", str(keys["public"]), "--ignore-paths",
               str(signed / SIGNATURE_FILE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout
    result = subprocess.run([*command[:-5], "--public_key", str(keys["other"])], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0


# ---- every changed byte is named -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["manifest.json", "model.onnx", "reference_io.npz"])
def test_a_changed_byte_fails_naming_the_file(signed: Path, keys: dict[str, Path], tmp_path: Path,
                                              name: str) -> None:
    package = _copy(signed, tmp_path)
    # manifest.json: a byte inside the JSON text, so the manifest still parses (its end is a newline)
    _flip_byte(package / name, offset=-3 if name == "manifest.json" else -1)
    trusted = check_signature(package, Trust(trusted_keys=(keys["public"],)))
    assert not trusted.passed and trusted.status == "invalid"
    assert f"{name}: changed since it was signed (sha256 differs from model.sig)" in trusted.problems
    assert check_signature(package).problems == trusted.problems  # without trust: the digests still hold


def test_added_and_removed_files_are_named(signed: Path, tmp_path: Path, keys: dict[str, Path]) -> None:
    package = _copy(signed, tmp_path)
    (package / "extra.txt").write_text("slipped in\n")
    (package / "README.md").unlink()
    report = check_signature(package, Trust(trusted_keys=(keys["public"],)))
    assert "extra.txt: not covered by the signature (added after signing?)" in report.problems
    assert "README.md: signed but missing" in report.problems


def test_a_forged_signature_fails(signed: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    package = _copy(signed, tmp_path)
    bundle = json.loads((package / SIGNATURE_FILE).read_text())
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    (package / SIGNATURE_FILE).write_text(json.dumps(bundle))
    report = check_signature(package, Trust(trusted_keys=(keys["public"],)))
    assert not report.passed and "model.sig: does not verify with the trusted key(s)" in report.problems[0]


def test_resigning_replaces_the_signature(signed: Path, tmp_path: Path) -> None:
    package = _copy(signed, tmp_path)
    private, public, _ = _write_key(tmp_path, "new", ec.SECP521R1(), password=b"secret")
    with pytest.raises(SigningInputError, match="encrypted"):
        sign_package(package, key=private)
    report = sign_package(package, key=private, password="secret")
    assert report.signer == key_fingerprint(public) != read_signature(signed).signer
    assert check_signature(package, Trust(trusted_keys=(public,))).verified
    assert sorted(p.name for p in package.iterdir()) == sorted(p.name for p in signed.iterdir())  # no leftovers


def test_the_signature_file_is_allowed_only_under_its_own_name(signed: Path, tmp_path: Path) -> None:
    package = _copy(signed, tmp_path)
    (package / SIGNATURE_FILE).rename(package / "other.sig")
    report = verify_package(package)
    assert "unexpected file other.sig (not in the manifest)" in report.problems


def test_trust_options_are_checked_before_any_work(signed: Path, tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="--identity and --issuer go together"):
        verify_package(signed, trust=Trust(identity="someone@example.com"))
    with pytest.raises(UsageError, match="that is a private key"):
        verify_package(signed, trust=Trust(trusted_keys=(keys["private"],)))
    result = run_cli("verify", signed, "--trusted-key", tmp_path / "absent.pem")
    assert result.returncode == ExitCode.USAGE and "absent.pem: no such file" in result.stderr


# ---- bundles ------------------------------------------------------------------------------------------------------


def test_a_signed_bundle_verifies_and_its_signer_reads_without_trust(signed: Path, keys: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    bundle = write_bundle(signed, tmp_path / "bundles")
    with zipfile.ZipFile(bundle.path) as archive:
        assert f"efficientformer-l1-onnx-fp32/{SIGNATURE_FILE}" in archive.namelist()  # the package's name
    assert write_bundle(signed, tmp_path / "again").sha256 == bundle.sha256  # still reproducible
    unverified = read_signature(bundle.path)
    assert (unverified.present, unverified.kind, unverified.verified) == (True, SignatureKind.KEY, False)
    assert unverified.signer == key_fingerprint(keys["public"]) == read_signature(signed).signer
    report = verify_package(bundle.path, trust=Trust(trusted_keys=(keys["public"],)))
    assert report.passed, report.problems
    assert report.signature["status"] == "verified"  # extracted under another folder: names play no part


def test_a_bundle_of_a_tampered_signed_package_fails(signed: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    package = _copy(signed, tmp_path / "tampered")
    _flip_byte(package / "README.md")  # a file only the manifest and the signature protect
    manifest = json.loads((package / "manifest.json").read_text())  # the manifest made to agree: only the
    manifest["files"]["README.md"]["sha256"] = hashlib.sha256((package / "README.md").read_bytes()).hexdigest()
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")  # signature can tell
    bundle = write_bundle(package, tmp_path / "bundles")  # (efexport bundle would verify first and refuse)
    report = verify_package(bundle.path, trust=Trust(trusted_keys=(keys["public"],)))
    assert not report.passed
    assert "README.md: changed since it was signed (sha256 differs from model.sig)" in report.problems
    assert "manifest.json: changed since it was signed (sha256 differs from model.sig)" in report.problems


# ---- certificates and keyless ------------------------------------------------------------------------------------


def _certificate(subject: str, key, issuer_name: str, issuer_key, ca: bool,
                 extensions: tuple = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else []))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def test_certificate_signing_verifies_up_to_the_chain(signed: Path, tmp_path: Path) -> None:
    package = _copy(signed, tmp_path / "cert")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test Root CA", ca_key, "Test Root CA", ca_key, ca=True)
    private, _, key = _write_key(tmp_path, "leaf")
    leaf = _certificate("release signer", key, "Test Root CA", ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    result = run_cli("sign", package, "--key", private, "--certificate", tmp_path / "leaf.crt",
                     "--certificate-chain", tmp_path / "ca.pem", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "certificate"
    report = check_signature(package, Trust(certificate_chain=(tmp_path / "ca.pem",)))
    assert report.verified and report.signer == "CN=release signer", report.problems
    other_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other-ca.pem").write_bytes(_certificate("Other CA", other_key, "Other CA", other_key, ca=True)
                                            .public_bytes(serialization.Encoding.PEM))
    refused = check_signature(package, Trust(certificate_chain=(tmp_path / "other-ca.pem",)))
    assert not refused.passed and "does not verify" in refused.problems[0]
    wrong_kind = check_signature(package, Trust(trusted_keys=(tmp_path / "leaf.pub.pem",)))
    assert "trust it with --certificate-chain" in wrong_kind.problems[0]


def test_a_keyless_signature_names_its_identity_and_issuer_without_network(signed: Path, tmp_path: Path) -> None:
    """A Sigstore bundle's certificate (made here, with Fulcio's SAN and issuer extension) read back; trusting
    another identity fails before any network call."""
    package = _copy(signed, tmp_path / "keyless")
    workflow = "https://github.com/acme/efexport/.github/workflows/publish.yml@refs/tags/v1.2.0"
    issuer = "https://token.actions.githubusercontent.com"
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_der = b"\x0c" + bytes([len(issuer)]) + issuer.encode()  # DER UTF8String, as Fulcio writes it
    certificate = _certificate("", key, "sigstore-intermediate", key, ca=False, extensions=(
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(workflow)]), True),
        (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), issuer_der), False)))
    bundle = json.loads((package / SIGNATURE_FILE).read_text())
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": base64.b64encode(
        certificate.public_bytes(serialization.Encoding.DER)).decode()}, "tlogEntries": []}
    (package / SIGNATURE_FILE).write_text(json.dumps(bundle))
    read = read_signature(package)
    assert (read.kind, read.signer, read.issuer) == (SignatureKind.SIGSTORE, workflow, issuer)
    report = check_signature(package, Trust(identity="https://github.com/mallory/x", issuer=issuer))
    assert not report.passed and f"signed by {workflow} ({issuer}), not by the trusted" in report.problems[0]
