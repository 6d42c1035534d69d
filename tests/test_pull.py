"""efexport pull: from a directory registry and from moto's S3 server (loopback), with signatures.

The session's l1 ONNX package is published unsigned as 1.0.0 and (with a provenance statement, signed with a key
generated here) as 1.1.0 to a directory registry; the signed one also to S3. Each package is verified for real
once (publish's verification is cached per package and trust), every pull verifies for real. Refusals are checked
for their message, their exit code, and that nothing at all was left in the output folder.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from efexport.exporter.errors import ExitCode, NotInRegistry, OutputError, PublishRefused, VerifyError
from efexport.exporter.manifest import sha256_of
from efexport.exporter.provenance import write_provenance
from efexport.exporter.publish import INDEX_KEY, LocalStore, S3Store, Store, open_store, publish, read_index
from efexport.exporter.pull import PullResult, Trust, pull
from efexport.exporter.signing import PROVENANCE_FILE, SIGNATURE_FILE, key_fingerprint, sign_package
from tests.helpers import run_cli
from tests.packages import exported_package
from tests.s3server import BUCKET, aws_test_env, moto_server

pytestmark = pytest.mark.xdist_group("l1-packages")

MODEL, TARGET, NAME = "efficientformer-l1", "onnx-fp32", "efficientformer-l1-onnx-fp32"
UNSIGNED, SIGNED = "1.0.0", "1.1.0"


# ---------------------------------------------------------------------------------------------------- fixtures


def _key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    (ours, ours_pub), (_, theirs_pub) = _key_pair(folder, "ours"), _key_pair(folder, "theirs")
    return {"private": ours, "trusted": ours_pub, "other": theirs_pub}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """The session package (unsigned) and a copy with a provenance statement, signed with our key."""
    unsigned = exported_package("onnx", tmp_path_factory)[0]
    signed = shutil.copytree(unsigned, tmp_path_factory.mktemp("signed") / NAME)
    write_provenance(signed, builder_id="https://ci.example.org/runs/1", env={})
    sign_package(signed, key=keys["private"])
    return {UNSIGNED: unsigned, SIGNED: signed}


@pytest.fixture(scope="module")
def cached_verify() -> Iterator[None]:
    """publish's verification, run for real once per package and trust: publishing to two registries is about the
    store, not the package."""
    from efexport.exporter import verify as exporter_verify

    real, done = exporter_verify.verify_package, {}

    def cached(path: Path, threads: int = 2, latency: bool = False, trust: object = None) -> object:
        key = (str(Path(path).resolve()), repr(trust))
        if key not in done:
            done[key] = real(path, threads, latency, trust)
        return done[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter_verify, "verify_package", cached)
        yield


def _publish(store: Store, packages: dict[str, Path], keys: dict[str, Path], versions: tuple[str, ...]) -> None:
    if UNSIGNED in versions:
        publish(packages[UNSIGNED], store, UNSIGNED, allow_random_weights=True)
    evidence = packages[SIGNED].parent / "evidence" / PROVENANCE_FILE  # the statement, also as registry evidence
    evidence.parent.mkdir(exist_ok=True)
    shutil.copyfile(packages[SIGNED] / PROVENANCE_FILE, evidence)
    publish(packages[SIGNED], store, SIGNED, allow_random_weights=True, trust=Trust(trusted_keys=(keys["trusted"],)),
            evidence=[evidence])


@pytest.fixture(scope="module")
def dir_registry(tmp_path_factory: pytest.TempPathFactory, packages: dict[str, Path], keys: dict[str, Path],
                 cached_verify: None) -> Path:
    root = tmp_path_factory.mktemp("registry") / "registry"
    _publish(open_store(str(root)), packages, keys, (UNSIGNED, SIGNED))
    return root


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with aws_test_env(), moto_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_registry(s3_endpoint: str, packages: dict[str, Path], keys: dict[str, Path], cached_verify: None) -> str:
    _publish(S3Store(BUCKET, "pull", s3_endpoint), packages, keys, (SIGNED,))  # the signed one: what S3 adds
    return s3_endpoint


@pytest.fixture(params=["dir", "s3"])
def registry(request: pytest.FixtureRequest) -> Callable[[], Store]:
    """A fresh handle on the published registry of one kind."""
    if request.param == "dir":
        root = request.getfixturevalue("dir_registry")
        return lambda: open_store(str(root), create=False)
    endpoint = request.getfixturevalue("s3_registry")
    return lambda: S3Store(BUCKET, "pull", endpoint)


@pytest.fixture
def scratch_registry(dir_registry: Path, tmp_path: Path) -> Path:
    """A copy of the directory registry this test may damage."""
    return shutil.copytree(dir_registry, tmp_path / "registry")


def _digests(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (manifest, signature and statement included) and its sha256."""
    return {p.relative_to(directory).as_posix(): sha256_of(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def _entry(store: Store, version: str) -> dict:
    return read_index(store)["packages"][MODEL][version][TARGET]


def _nothing_left(out: Path, before: set[str] | None = None) -> None:
    if before is None:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    else:
        assert {p.name for p in out.iterdir()} == before


def _stored_zip(package: Path, bundle: Path) -> str:
    """``package`` as a bundle named ``bundle`` (stored, not deflated: these tests only need its members); sha256."""
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in package.rglob("*") if p.is_file()):
            archive.write(path, f"{NAME}/{path.relative_to(package).as_posix()}")
    return sha256_of(bundle)


def _list_by_hand(root: Path, version: str, package: Path) -> None:
    """Put ``package`` into the directory registry under ``version`` as a (compromised) publisher would: bundle,
    checksum and index entry all consistent with each other, no verification."""
    store = LocalStore(root)
    folder = f"{MODEL}/{version}/{TARGET}/by-hand"
    bundle = root / folder / f"{NAME}.zip"
    bundle.parent.mkdir(parents=True)
    digest = _stored_zip(package, bundle)
    (bundle.parent / f"{NAME}.zip.sha256").write_text(f"{digest}  {NAME}.zip\n")
    index = read_index(store)
    entry = dict(_entry(store, UNSIGNED), folder=folder, bundle=f"{folder}/{NAME}.zip", sha256=digest,
                 checksum_file=f"{folder}/{NAME}.zip.sha256", evidence={}, signature=None)
    index["packages"][MODEL][version] = {TARGET: entry}
    (root / INDEX_KEY).write_text(json.dumps(index))


# ---------------------------------------------------------------------------------------------------- publish


def test_publish_keeps_the_signature_beside_the_bundle_and_records_the_signer(
        dir_registry: Path, packages: dict[str, Path], keys: dict[str, Path]) -> None:
    store = LocalStore(dir_registry)
    entry = _entry(store, SIGNED)
    signature = entry["signature"]
    assert signature["key"] == f"{entry['folder']}/{SIGNATURE_FILE}"
    assert store.read(signature["key"]) == (packages[SIGNED] / SIGNATURE_FILE).read_bytes()  # without the bundle
    assert entry["objects"][signature["key"]] == signature["sha256"] == sha256_of(packages[SIGNED] / SIGNATURE_FILE)
    assert (signature["kind"], signature["signer"]) == ("key", key_fingerprint(keys["trusted"]))
    assert signature["verified"] is True and signature["trusted_by"] == key_fingerprint(keys["trusted"])
    with zipfile.ZipFile(dir_registry / entry["bundle"]) as bundle:  # and inside the bundle
        assert bundle.read(f"{NAME}/{SIGNATURE_FILE}") == store.read(signature["key"])
    assert _entry(store, UNSIGNED)["signature"] is None


def test_publish_refuses_unsigned_under_require_signature_and_a_signer_not_trusted(
        packages: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "registry")
    with pytest.raises(PublishRefused, match=r"unsigned: no model\.sig in the package, and --require-signature"):
        publish(packages[UNSIGNED], store, "2.0.0", allow_random_weights=True, trust=Trust(require_signature=True))
    other = key_fingerprint(keys["other"])
    with pytest.raises(PublishRefused, match=rf"signed by key sha256:\w+, which is not a trusted key \({other}\)") \
            as refused:
        publish(packages[SIGNED], store, "2.0.0", allow_random_weights=True, trust=Trust(trusted_keys=(keys["other"],)))
    assert refused.value.exit_code == ExitCode.PUBLISH_REFUSED
    assert store.list_keys() == []


def test_cli_publish_require_signature_refuses_an_unsigned_package_before_verifying(
        packages: dict[str, Path], tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    refused = run_cli("publish", packages[UNSIGNED], "--to", registry, "--version", "2.0.0", "--allow-random-weights",
                      "--require-signature", "--json")
    assert refused.returncode == ExitCode.PUBLISH_REFUSED, refused.stderr
    assert "unsigned: no model.sig in the package, and --require-signature" in " ".join(refused.stderr.split())
    assert json.loads(refused.stdout)["exit_code"] == 10
    assert not (registry / INDEX_KEY).exists()


# ---------------------------------------------------------------------------------------------------- pull


def test_pull_latest_signed_with_the_trusted_key(registry: Callable[[], Store], packages: dict[str, Path],
                                                  keys: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "models"
    result = pull(registry(), MODEL, "latest", TARGET, out, trust=Trust(trusted_keys=(keys["trusted"],)))
    assert isinstance(result, PullResult)
    assert (result.status, result.version, result.requested_version) == ("pulled", SIGNED, "latest")
    installed = out / NAME
    assert result.path == str(installed) and sorted(p.name for p in out.iterdir()) == [NAME]  # no staging left
    assert _digests(installed) == _digests(packages[SIGNED])  # complete, byte for byte, signature included
    fingerprint = key_fingerprint(keys["trusted"])
    assert result.signature["status"] == "verified" and result.signature["signer"] == fingerprint
    assert result.signature["trusted_by"] == fingerprint
    assert [statement["source"] for statement in result.provenance] == ["package", "registry"]
    for statement in result.provenance:  # the package's own, and the registry's evidence copy of it
        assert statement["problems"] == [] and statement["builder"] == "https://ci.example.org/runs/1"
        assert statement["inputs"]["variant"] == "l1"
    assert result.verify["passed"] and result.verify["parity"]["passed"]


def test_pull_unsigned_without_trust_then_force_replaces(dir_registry: Path, packages: dict[str, Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "models"
    (out / NAME).mkdir(parents=True)
    (out / NAME / "old.txt").write_text("an older pull")
    store = open_store(str(dir_registry), create=False)
    with pytest.raises(OutputError, match="already exists; pass --force"):
        pull(store, MODEL, UNSIGNED, TARGET, out)
    result = pull(store, MODEL, UNSIGNED, TARGET, out, force=True)
    assert result.status == "replaced" and result.signature["status"] == "unsigned" and result.provenance == []
    assert _digests(out / NAME) == _digests(packages[UNSIGNED])
    assert sorted(p.name for p in out.iterdir()) == [NAME]


@pytest.mark.parametrize("kind", ["dir", "s3"])
def test_a_tampered_bundle_is_refused_and_nothing_is_left(kind: str, request: pytest.FixtureRequest,
                                                          keys: dict[str, Path], tmp_path: Path) -> None:
    if kind == "dir":
        store: Store = LocalStore(request.getfixturevalue("scratch_registry"))
    else:
        store = S3Store(BUCKET, "tampered", request.getfixturevalue("s3_endpoint"))
        source = LocalStore(request.getfixturevalue("dir_registry"))
        listed = _entry(source, SIGNED)
        for key in (INDEX_KEY, listed["bundle"], listed["checksum_file"]):  # what a pull reads first, copied
            store.put_bytes(key, source.read(key))
    entry = _entry(store, SIGNED)
    data = bytearray(store.read(entry["bundle"]))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(entry["bundle"], bytes(data))
    out = tmp_path / "models"
    with pytest.raises(VerifyError, match=r"efficientformer-l1-onnx-fp32\.zip: sha256 \w+ differs from the index's") \
            as refused:
        pull(store, MODEL, SIGNED, TARGET, out, trust=Trust(trusted_keys=(keys["trusted"],)))
    assert refused.value.exit_code == ExitCode.VERIFY_FAILED
    _nothing_left(out)


def test_a_consistent_forgery_is_refused_by_the_signature_or_by_verify(scratch_registry: Path,
                                                                         packages: dict[str, Path],
                                                                         keys: dict[str, Path], tmp_path: Path) -> None:
    """Bundle, checksum and index rewritten to agree (a compromised registry): the signature names the changed
    file; unsigned, the package's own verification does."""
    forged = shutil.copytree(packages[SIGNED], tmp_path / "forged-signed")
    (forged / "README.md").write_text("# efficientformer-l1: now with a different story\n")
    _list_by_hand(scratch_registry, "6.6.6", forged)
    out = tmp_path / "models"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    store = LocalStore(scratch_registry)
    for trust in (Trust(), Trust(trusted_keys=(keys["trusted"],))):  # integrity is checked even without trust
        with pytest.raises(VerifyError, match=r"signature refused: README\.md: changed since it was signed"):
            pull(store, MODEL, "6.6.6", TARGET, out, trust=trust)
        _nothing_left(out, {"keep.txt"})

    unsigned = shutil.copytree(packages[UNSIGNED], tmp_path / "forged-unsigned")
    (unsigned / "README.md").write_text("# efficientformer-l1: now with a different story\n")
    _list_by_hand(scratch_registry, "6.6.7", unsigned)
    with pytest.raises(VerifyError, match=r"does not verify: README\.md: sha256 differs from the manifest"):
        pull(store, MODEL, "6.6.7", TARGET, out)
    _nothing_left(out, {"keep.txt"})


def test_signature_required_or_from_another_key_is_refused(dir_registry: Path, keys: dict[str, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "models"
    store = LocalStore(dir_registry)
    with pytest.raises(VerifyError, match=r"unsigned: no model\.sig in the package, and --require-signature"):
        pull(store, MODEL, UNSIGNED, TARGET, out, trust=Trust(require_signature=True))
    with pytest.raises(VerifyError, match=r"unsigned: .*a trusted signer is required"):
        pull(store, MODEL, UNSIGNED, TARGET, out, trust=Trust(trusted_keys=(keys["trusted"],)))
    with pytest.raises(VerifyError, match=r"signed by key sha256:\w+, which is not a trusted key") as refused:
        pull(store, MODEL, SIGNED, TARGET, out, trust=Trust(trusted_keys=(keys["other"],)))
    assert refused.value.exit_code == ExitCode.VERIFY_FAILED
    _nothing_left(out)


def test_what_is_not_in_the_registry_is_named_with_what_is(dir_registry: Path, tmp_path: Path) -> None:
    store = open_store(str(dir_registry), create=False)
    out = tmp_path / "models"
    cases = [(("efficientformer-l3", "latest", TARGET), r"no model 'efficientformer-l3'; the registry holds: "
                                                        r"efficientformer-l1$"),
             ((MODEL, "2.0.0", TARGET), r"efficientformer-l1 has no version '2.0.0'; available: 1\.0\.0, 1\.1\.0$"),
             ((MODEL, SIGNED, "coreml-fp16"), r"efficientformer-l1 1\.1\.0 has no target 'coreml-fp16'; "
                                              r"available: onnx-fp32$"),
             ((MODEL, "latest", "coreml-fp16"), r"no version of efficientformer-l1 has target 'coreml-fp16'; its "
                                                r"targets: onnx-fp32$")]
    for (model, version, target), message in cases:
        with pytest.raises(NotInRegistry, match=message) as missing:
            pull(store, model, version, target, out)
        assert missing.value.exit_code == ExitCode.NOT_IN_REGISTRY == 12
    with pytest.raises(NotInRegistry, match=r"no index\.json"):
        pull(LocalStore(tmp_path), MODEL, "latest", TARGET, out)
    with pytest.raises(NotInRegistry, match="no such registry directory"):
        open_store(str(tmp_path / "nowhere"), create=False, option="REGISTRY")
    _nothing_left(out)


# ---------------------------------------------------------------------------------------------------- the CLI


def test_cli_pull_json_and_refusals(dir_registry: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "models"
    done = run_cli("pull", dir_registry, MODEL, "--version", "latest", "--target", TARGET, "--out", out,
                   "--trusted-key", keys["trusted"], "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"status", "registry", "model", "version", "requested_version", "target", "path", "sha256",
                           "bundle", "published_at", "signature", "provenance", "verify"}
    assert (result["status"], result["version"], result["path"]) == ("pulled", SIGNED, str(out / NAME))
    assert result["signature"]["status"] == "verified"
    assert [statement["source"] for statement in result["provenance"]] == ["package", "registry"]
    assert set(result["verify"]) == {"passed", "files_checked", "parity", "runtime_parity", "not_checked_here"}
    stderr = " ".join(done.stderr.split())
    assert f"pulled {MODEL} {SIGNED} (latest) {TARGET}" in stderr
    assert f"signature: key {key_fingerprint(keys['trusted'])}: verified" in stderr
    assert "provenance (package): builder https://ci.example.org/runs/1" in stderr
    assert "provenance (registry): builder https://ci.example.org/runs/1" in stderr

    refused = run_cli("pull", dir_registry, MODEL, "--version", "3.0.0", "--target", TARGET, "--out",
                      tmp_path / "other", "--json")
    assert refused.returncode == ExitCode.NOT_IN_REGISTRY, refused.stderr
    assert json.loads(refused.stdout)["exit_code"] == 12
    assert "has no version '3.0.0'; available: 1.0.0, 1.1.0" in " ".join(refused.stderr.split())
    assert not (tmp_path / "other").exists()
