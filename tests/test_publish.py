"""Publishing to a registry: a local directory and a real S3-protocol server (moto, a subprocess on loopback).

Two l1 ONNX packages come from the real pipeline (two exports of the same inputs: same name, different bytes). Store
wrappers around the real stores record writes, inject faults and corrupt uploads; no client is mocked.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from efexport.exporter.bundle import Bundle, write_bundle
from efexport.exporter.errors import ExitCode, PublishError, PublishRefused, UsageError
from efexport.exporter.manifest import sha256_of
from efexport.exporter.manifest_model import Manifest
from efexport.exporter.model_card import CARD_FILE
from efexport.exporter.publish import (
    INDEX_KEY,
    INDEX_SCHEMA,
    LocalStore,
    S3Store,
    Store,
    gate_problems,
    open_store,
    publish,
    read_index,
)
from efexport.exporter.verify import verify_package
from tests.helpers import run_cli
from tests.packages import exported_again, exported_package
from tests.s3server import BUCKET, aws_test_env, moto_server
from tests.s3server import free_port as _free_port

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

MODEL, TARGET, NAME = "efficientformer-l1", "onnx-fp32", "efficientformer-l1-onnx-fp32"
_prefixes = itertools.count()


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Credentials for the loopback server, in this process and the CLI subprocesses; nothing from the user's."""
    with aws_test_env():
        yield


@pytest.fixture(scope="module")
def s3_endpoint(aws_env: None) -> Iterator[str]:
    with moto_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two packages with the same name and different bytes: two exports of the same inputs, whose measured latency
    (manifest, model card) differs."""
    return exported_package("onnx", tmp_path_factory)[0], exported_again(tmp_path_factory)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, packages: tuple[Path, Path]) -> tuple[Bundle, Bundle]:
    root = tmp_path_factory.mktemp("bundles")
    return write_bundle(packages[0], root / "a"), write_bundle(packages[1], root / "b")


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A factory of fresh, empty registries of one kind: a local directory, or a new prefix on the S3 server."""
    if request.param == "local":
        return lambda: LocalStore(tmp_path / f"registry-{next(_prefixes)}")
    endpoint = request.getfixturevalue("s3_endpoint")
    return lambda: S3Store(BUCKET, f"registry-{next(_prefixes)}", endpoint)


_verified: dict[tuple[str, str | None, str], object] = {}


@pytest.fixture
def verify_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real verification, run once per package file: the tests using this are about the store."""
    from efexport.exporter import verify as exporter_verify

    real = exporter_verify.verify_package

    def cached(path: Path, threads: int = 2, latency: bool = False, trust: object = None) -> object:
        path = Path(path)
        key = (str(path.resolve()), sha256_of(path) if path.is_file() else None, repr(trust))
        if key not in _verified:
            _verified[key] = real(path, threads, latency, trust)
        return _verified[key]

    monkeypatch.setattr(exporter_verify, "verify_package", cached)


# ---------------------------------------------------------------------------------------------------- store wrappers


class Recording:
    """The real store; every write is recorded, then optionally failed (before or after it took effect),
    corrupted, or followed by a check."""

    def __init__(self, inner: Store, fail_at: int | None = None, committed: bool = False,
                 corrupt: str | None = None, after_write: Callable[[], None] | None = None) -> None:
        self.inner, self.location = inner, inner.location
        self.fail_at, self.committed, self.corrupt, self.after_write = fail_at, committed, corrupt, after_write
        self.writes: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _write(self, op: str, key: str, run: Callable[[], object]) -> object:
        self.writes.append((op, key))
        failing = len(self.writes) == self.fail_at
        if failing and not self.committed:
            raise PublishError(f"injected fault before write {len(self.writes)} ({op} {key})")
        result = run()
        if failing:
            raise PublishError(f"injected fault after write {len(self.writes)} ({op} {key})")
        if self.after_write:
            self.after_write()
        return result

    def _bytes(self, key: str, data: bytes) -> bytes:
        if self.corrupt and key.endswith(self.corrupt):
            return bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> object:
        if self.corrupt and key.endswith(self.corrupt):
            return self.put_bytes(key, Path(path).read_bytes())
        return self._write("put", key, lambda: self.inner.put_file(key, path, sha256))

    def put_bytes(self, key: str, data: bytes) -> object:
        return self._write("put", key, lambda: self.inner.put_bytes(key, self._bytes(key, data)))

    def swap_index(self, data: bytes, token: str | None) -> object:
        return self._write("index", INDEX_KEY, lambda: self.inner.swap_index(data, token))

    def delete(self, prefix: str) -> object:
        return self._write("delete", prefix, lambda: self.inner.delete(prefix))


def entry_of(store: Store, version: str = "1.0.0") -> dict | None:
    return read_index(store)["packages"].get(MODEL, {}).get(version, {}).get(TARGET)


def assert_index_consistent(store: Store) -> None:
    """Every index entry points at objects that exist with the recorded sha256 (the bundle's included)."""
    for model, versions in read_index(store)["packages"].items():
        for version, targets in versions.items():
            for target, entry in targets.items():
                where = f"{model} {version} {target}"
                assert entry["objects"][entry["bundle"]] == entry["sha256"], where
                for key, digest in entry["objects"].items():
                    assert store.sha256(key) == digest, f"{where}: {key}"


def _publish(source: Path, store: Store, version: str = "1.0.0", **options: object) -> object:
    return publish(source, store, version, allow_random_weights=True, **options)


# ---------------------------------------------------------------------------------------------------- core behaviour


def test_publish_layout_index_and_idempotence(make_store: Callable[[], Store], packages: tuple[Path, Path],
                                              bundles: tuple[Bundle, Bundle], tmp_path: Path,
                                              verify_once: None) -> None:
    store = make_store()
    evidence = tmp_path / "imagenet-val.json"
    evidence.write_text(json.dumps({"top1": 0.001, "images": 50000}))
    result = _publish(packages[0], store, evidence=[evidence])
    digest = bundles[0].sha256
    folder = f"{MODEL}/1.0.0/{TARGET}/{digest[:16]}"
    expected = {f"{folder}/{NAME}.zip", f"{folder}/{NAME}.zip.sha256", f"{folder}/manifest.json",
                f"{folder}/{CARD_FILE}", f"{folder}/evidence/imagenet-val.json"}
    assert result.status == "published" and result.sha256 == digest and result.folder == folder
    assert set(store.list_keys()) == expected | {INDEX_KEY}
    assert set(result.keys) == expected

    index = read_index(store)
    assert index["schema"] == INDEX_SCHEMA
    entry = index["packages"][MODEL]["1.0.0"][TARGET]
    manifest = json.loads((packages[0] / "manifest.json").read_text())
    assert entry["bundle"] == f"{folder}/{NAME}.zip" and entry["bytes"] == bundles[0].bytes
    assert entry["manifest"] == f"{folder}/manifest.json" and entry["card"] == f"{folder}/{CARD_FILE}"
    assert entry["evidence"] == {"imagenet-val.json": {"key": f"{folder}/evidence/imagenet-val.json",
                                                       "sha256": sha256_of(evidence)}}
    assert (entry["variant"], entry["format"], entry["precision"]) == ("l1", "onnx", "fp32")
    assert entry["weights"] == {"source": "random-init", "seed": 0} and entry["deployable"] is False
    assert entry["parity"]["passed"] is True and entry["parity"]["max_abs"] == manifest["parity"]["max_abs"]
    (latency,) = entry["latency"]
    assert latency["p50_ms"] == manifest["latency"][0]["stats_ms"]["p50"]
    assert latency["device"] == manifest["latency"][0]["device"]["cpu"]
    assert entry["efexport"]["version"] == manifest["versions"]["efexport"]
    assert entry["published_at"].endswith("Z")

    stored = store.read(entry["bundle"])
    assert stored == bundles[0].path.read_bytes()  # byte-identical to write_bundle of the package
    assert store.read(entry["manifest"]) == (packages[0] / "manifest.json").read_bytes()
    assert store.read(entry["card"]) == (packages[0] / CARD_FILE).read_bytes()
    assert store.read(f"{folder}/{NAME}.zip.sha256") == f"{digest}  {NAME}.zip\n".encode()
    download = tmp_path / "download" / f"{NAME}.zip"
    download.parent.mkdir()
    download.write_bytes(stored)
    assert verify_package(download).passed

    for source in (packages[0], bundles[0].path):  # the directory again, then its bundle: the same bytes
        recording = Recording(store)
        again = _publish(source, recording, evidence=[evidence])
        assert again.status == "unchanged" and again.folder == folder
        assert recording.writes == []
    assert read_index(store) == index

    store.delete(entry["card"])  # damage from outside: the next publish puts back exactly what is missing
    recording = Recording(store)
    assert _publish(bundles[0].path, recording, evidence=[evidence]).status == "repaired"
    assert recording.writes == [("put", entry["card"])]
    assert_index_consistent(store)


def test_version_conflict_refused_then_force_replaces(make_store: Callable[[], Store],
                                                       bundles: tuple[Bundle, Bundle], verify_once: None) -> None:
    """With the invariant checked after every single write: index entries only ever point at intact objects."""
    store = make_store()
    recording = Recording(store, after_write=lambda: assert_index_consistent(store))
    first = _publish(bundles[0].path, recording)
    assert first.status == "published"

    with pytest.raises(PublishRefused) as refused:
        _publish(bundles[1].path, recording)
    message = str(refused.value)
    assert f"{MODEL} 1.0.0 {TARGET}" in message
    assert bundles[0].sha256[:12] in message and bundles[1].sha256[:12] in message
    assert entry_of(store)["sha256"] == bundles[0].sha256

    writes_before = len(recording.writes)
    replaced = _publish(bundles[1].path, recording, force=True)
    assert replaced.status == "replaced" and replaced.sha256 == bundles[1].sha256
    assert len(recording.writes) > writes_before  # the invariant was checked after each of these writes
    entry = entry_of(store)
    assert entry["folder"] == f"{MODEL}/1.0.0/{TARGET}/{bundles[1].sha256[:16]}"
    assert store.list_keys(first.folder) == []  # the old folder is gone
    assert store.read(entry["bundle"]) == bundles[1].path.read_bytes()
    assert recording.writes[-1] == ("delete", first.folder)  # deleted only after the index switched
    assert recording.writes[-2][0] == "index"


def test_random_init_weights_refused_without_the_flag(make_store: Callable[[], Store],
                                                      bundles: tuple[Bundle, Bundle]) -> None:
    store = make_store()
    with pytest.raises(PublishRefused, match=r"random-init weights .*--allow-random-weights"):
        publish(bundles[0].path, store, "1.0.0")
    assert store.list_keys() == []


def test_tampered_package_refused_naming_the_file(make_store: Callable[[], Store], packages: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    copy = shutil.copytree(packages[0], tmp_path / "tampered")
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    store = make_store()
    with pytest.raises(PublishRefused, match=r"model\.onnx: sha256 differs"):
        _publish(copy, store)
    assert store.list_keys() == []


def test_evidence_of_a_published_version_changes_only_with_force(tmp_path: Path, bundles: tuple[Bundle, Bundle],
                                                                   verify_once: None) -> None:
    first, second = tmp_path / "bench.json", tmp_path / "review.json"
    first.write_text('{"p50_ms": 10}')
    second.write_text('{"approved": true}')
    store = LocalStore(tmp_path / "registry")
    published = _publish(bundles[0].path, store, evidence=[first])
    with pytest.raises(PublishRefused, match="already published with other evidence files"):
        _publish(bundles[0].path, store, evidence=[second])
    recording = Recording(store)
    assert _publish(bundles[0].path, recording, evidence=[second], force=True).status == "replaced"
    folder = published.folder
    assert recording.writes == [("put", f"{folder}/evidence/review.json"), ("index", INDEX_KEY),
                                ("delete", f"{folder}/evidence/bench.json")]  # the bundle is not uploaded again
    assert list(entry_of(store)["evidence"]) == ["review.json"]
    assert_index_consistent(store)


def test_usage_errors_and_gates(tmp_path: Path, packages: tuple[Path, Path], tensorrt: dict) -> None:
    store = LocalStore(tmp_path / "registry")
    with pytest.raises(UsageError, match=re.escape("--version '../1.0'")):
        _publish(packages[0], store, "../1.0")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match=r"--evidence .*broken\.json: not a JSON file"):
        _publish(packages[0], store, evidence=[broken])
    assert store.list_keys() == []

    raw = json.loads((packages[0] / "manifest.json").read_text())
    manifest = Manifest.model_validate(raw)
    assert gate_problems(manifest, allow_random_weights=True) == []
    (random_init,) = gate_problems(manifest)
    assert "random-init weights (seed 0)" in random_init
    failing = raw["parity"] | {"passed": False, "failures": ["max abs 1 > 0.001"]}
    report = {key: value for key, value in failing.items() if key not in ("reference_file", "compared_against")}
    failed = Manifest.model_validate(raw | {"parity": failing, "runtime_parity": {"coreml": report}})
    assert gate_problems(failed, allow_random_weights=True) == ["the parity gate did not pass",
                                                                "parity on coreml did not pass"]
    tensorrt["target"]["engine"] = {"built": False, "reason": "no GPU"}
    tensorrt["package"] |= {"deployable": False, "not_deployable_because": ["no TensorRT engine was built (no GPU)"]}
    no_engine = Manifest.model_validate(tensorrt)
    (problem,) = gate_problems(no_engine, allow_random_weights=True)
    assert "no TensorRT engine was built (no GPU)" in problem
    assert gate_problems(no_engine, allow_random_weights=True, allow_no_engine=True) == []


# ---------------------------------------------------------------------------------------------------- failures


def test_interrupted_publish_never_lists_a_partial_package(make_store: Callable[[], Store],
                                                           bundles: tuple[Bundle, Bundle], tmp_path: Path,
                                                           verify_once: None) -> None:
    source = bundles[0].path
    full = Recording(make_store())
    _publish(source, full)
    assert full.writes[-1][0] == "index" and len(full.writes) == 5  # 4 objects, then the index
    for n in range(1, len(full.writes) + 1):
        store = make_store()
        with pytest.raises(PublishError, match="injected fault"):
            _publish(source, Recording(store, fail_at=n))
        assert entry_of(store) is None, f"fault at write {n}"
        rerun = Recording(store)
        assert _publish(source, rerun).status == "published"
        assert rerun.writes == full.writes[n - 1:], f"fault at write {n}: intact uploads were redone"
        assert entry_of(store)["sha256"] == bundles[0].sha256
        assert_index_consistent(store)
    # The index written, but the reply lost: the next run finds it listed and intact.
    store = make_store()
    with pytest.raises(PublishError, match="injected fault after"):
        _publish(source, Recording(store, fail_at=len(full.writes), committed=True))
    assert _publish(source, Recording(store)).status == "unchanged"
    download = tmp_path / f"{NAME}.zip"
    download.write_bytes(store.read(entry_of(store)["bundle"]))
    assert verify_package(download).passed


def test_interrupted_force_replace_keeps_the_old_package(make_store: Callable[[], Store],
                                                         bundles: tuple[Bundle, Bundle], verify_once: None) -> None:
    """A fault at each write of a --force replacement. The two packages take turns replacing each other in one
    store: a completed replacement deletes the other's folder, so each round starts from one listed package."""
    store = make_store()
    listed, other = bundles
    _publish(listed.path, store)
    full = Recording(store)
    _publish(other.path, full, force=True)
    listed, other = other, listed
    ops = [op for op, _ in full.writes]
    assert ops == ["put"] * 4 + ["index", "delete"]
    switch = ops.index("index") + 1  # the write (numbered from 1) that lists the new package
    for n in range(1, len(ops) + 1):
        with pytest.raises(PublishError, match="injected fault"):
            _publish(other.path, Recording(store, fail_at=n), force=True)
        expected = listed if n <= switch else other
        assert entry_of(store)["sha256"] == expected.sha256, f"fault at write {n}"
        assert_index_consistent(store)  # the listed package, old or new, is intact
        rerun = Recording(store)
        result = _publish(other.path, rerun, force=True)
        assert result.status == ("replaced" if n <= switch else "unchanged"), f"fault at write {n}"
        assert entry_of(store)["sha256"] == other.sha256
        assert_index_consistent(store)
        if n <= switch:
            assert len(rerun.writes) == len(ops) - (n - 1)  # intact uploads are not redone
            assert store.list_keys() == sorted([INDEX_KEY, *entry_of(store)["objects"]])  # the old folder is gone
        listed, other = other, listed


class Racing(Recording):
    """Another publisher lists a package between this publish's read of the index and its write."""

    raced = False

    def swap_index(self, data: bytes, token: str | None) -> object:
        if not self.raced:
            self.raced = True
            current, current_token = self.inner.read_index()
            index = json.loads(current) if current else {"schema": INDEX_SCHEMA, "packages": {}}
            index["packages"]["efficientformer-l7"] = {"2.0.0": {"onnx-fp32": {"sha256": "0" * 64, "objects": {}}}}
            assert self.inner.swap_index(json.dumps(index).encode(), current_token)
        return super().swap_index(data, token)


def test_index_is_swapped_with_compare_and_swap(make_store: Callable[[], Store], bundles: tuple[Bundle, Bundle],
                                                verify_once: None) -> None:
    store = make_store()
    assert store.read_index() == (None, None)
    assert store.swap_index(b"first", None)
    assert not store.swap_index(b"second", None)  # there is an index now: creating one fails
    data, token = store.read_index()
    assert data == b"first" and token is not None
    assert store.swap_index(b"second", token)
    assert not store.swap_index(b"third", token)  # stale: someone wrote since that read
    assert store.read_index()[0] == b"second"

    store = make_store()
    racing = Racing(store)
    assert _publish(bundles[0].path, racing).status == "published"
    assert [op for op, _ in racing.writes].count("index") == 2  # lost the race once, re-read, retried
    packages = read_index(store)["packages"]
    assert set(packages) == {MODEL, "efficientformer-l7"}  # neither publisher's entry was lost
    assert packages[MODEL]["1.0.0"][TARGET]["sha256"] == bundles[0].sha256


def test_upload_that_does_not_verify_is_never_listed(make_store: Callable[[], Store],
                                                     bundles: tuple[Bundle, Bundle], verify_once: None) -> None:
    folder = f"{MODEL}/1.0.0/{TARGET}/{bundles[0].sha256[:16]}"
    for damaged in ("manifest.json", f"{NAME}.zip"):  # bytes, then a file
        store = make_store()
        with pytest.raises(PublishError, match=re.escape(f"{folder}/{damaged}: the upload did not verify")):
            _publish(bundles[0].path, Recording(store, corrupt=damaged))
        assert entry_of(store) is None
        assert store.list_keys() != [] and INDEX_KEY not in store.list_keys()


def test_latency_comparison_with_the_previous_version(tmp_path: Path, bundles: tuple[Bundle, Bundle],
                                                      verify_once: None) -> None:
    store = LocalStore(tmp_path / "registry")
    assert _publish(bundles[0].path, store, "2.0.0").latency_comparison == ()
    result = _publish(bundles[1].path, store, "10.0.0")  # after 2.0.0 as a version, before it as a string
    (row,) = result.latency_comparison
    old = read_index(store)["packages"][MODEL]["2.0.0"][TARGET]["latency"][0]["p50_ms"]
    new = read_index(store)["packages"][MODEL]["10.0.0"][TARGET]["latency"][0]["p50_ms"]
    assert old != new
    assert (row["backend"], row["measured"], row["batch_size"], row["precision"]) == \
        ("onnxruntime-cpu", "host_end_to_end", 1, "fp32")
    assert row["previous_version"] == "2.0.0" and row["previous_p50_ms"] == old and row["p50_ms"] == new
    assert row["ratio"] == pytest.approx(new / old)
    # Published last, but the lowest version: nothing before it to compare with.
    assert _publish(bundles[1].path, store, "1.5.0").latency_comparison == ()


def test_bad_destinations(s3_endpoint: str, bundles: tuple[Bundle, Bundle], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"gs:// destinations are not supported"):
        open_store("gs://x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        open_store(str(bundles[0].path))
    with pytest.raises(PublishError, match="bucket 'no-such-bucket' does not exist") as missing:
        _publish(bundles[0].path, open_store("s3://no-such-bucket/reg", s3_endpoint))
    assert missing.value.exit_code == ExitCode.PUBLISH_FAILED == 11

    closed = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:\d+") as unreachable:
        _publish(bundles[0].path, S3Store(BUCKET, "reg", closed, connect_timeout=1, max_attempts=1))
    assert time.monotonic() - started < 5
    assert f"s3://{BUCKET}/reg" in str(unreachable.value)


def test_missing_credentials_is_a_clear_publish_error(s3_endpoint: str, bundles: tuple[Bundle, Bundle],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PublishError, match="no AWS credentials found"):
        _publish(bundles[0].path, S3Store(BUCKET, "reg", s3_endpoint))


# ---------------------------------------------------------------------------------------------------- the CLI


def test_cli_publish_to_a_directory_then_refuse_a_conflict(packages: tuple[Path, Path], bundles: tuple[Bundle, Bundle],
                                                           tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    done = run_cli("publish", packages[0], "--to", registry, "--version", "1.0.0", "--allow-random-weights", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "published" and result["sha256"] == bundles[0].sha256
    assert f"published {MODEL} 1.0.0 {TARGET} -> {registry}" in " ".join(done.stderr.split())
    index = json.loads((registry / INDEX_KEY).read_text())
    assert index["packages"][MODEL]["1.0.0"][TARGET]["folder"] == result["folder"]
    assert (registry / result["folder"] / f"{NAME}.zip").read_bytes() == bundles[0].path.read_bytes()

    refused = run_cli("publish", bundles[1].path, "--to", registry, "--version", "1.0.0", "--allow-random-weights",
                      "--json")
    assert refused.returncode == ExitCode.PUBLISH_REFUSED == 10, refused.stderr
    assert json.loads(refused.stdout)["exit_code"] == 10
    assert "already published as a different package" in refused.stderr
    assert json.loads((registry / INDEX_KEY).read_text()) == index


def test_cli_publish_to_s3(s3_endpoint: str, packages: tuple[Path, Path], bundles: tuple[Bundle, Bundle]) -> None:
    done = run_cli("publish", bundles[0].path, "--to", f"s3://{BUCKET}/cli", "--endpoint-url", s3_endpoint,
                   "--allow-random-weights", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "published" and result["destination"] == f"s3://{BUCKET}/cli"
    manifest = json.loads((packages[0] / "manifest.json").read_text())
    assert result["version"] == manifest["versions"]["efexport"]  # the default: the efexport that made it
    store = S3Store(BUCKET, "cli", s3_endpoint)
    entry = read_index(store)["packages"][MODEL][result["version"]][TARGET]
    assert entry["folder"] == result["folder"] and entry["sha256"] == bundles[0].sha256
    assert store.sha256(entry["bundle"]) == bundles[0].sha256
