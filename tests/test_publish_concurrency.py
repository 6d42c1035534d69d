"""Concurrent publishers, for real: separate processes publishing at the same moment to one registry.

Four processes (multiprocessing, spawn: nothing inherited but the arguments) each publish a different version of
the same package to one registry, a directory or moto's S3 server on loopback. Each stops at a barrier right
before its first index swap, so all four swap the same index at the same moment: exactly one may win, the others
must see the conflict, re-read and try again. Every entry must land, no entry may be lost (one written before
them included), each publisher must have won exactly one swap, and every object the index names must have the
recorded sha256.

The S3 store's compare-and-swap is the server's conditional write (If-Match on the ETag read, If-None-Match: *
for the first index). moto's server honours both, but checks the condition and then stores the object without a
lock between the two (moto 5.2: ``S3Response.put_object``), so two conditional writes can both succeed when a
thread switch lands in that window; measured here with 8 concurrent writers, that happens with multi-megabyte
bodies (hashing them releases the GIL) and has not been seen with index-sized ones. AWS S3 does this atomically.
A failure of the S3 case below names lost entries; it would be moto's race, not efexport's, and the README says
so. MinIO's server (which does it atomically) cannot be installed from the package registries here.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
from pathlib import Path

import pytest

from efexport.exporter.bundle import Bundle, write_bundle
from efexport.exporter.publish import INDEX_SCHEMA, S3Store, Store, open_store, read_index
from efexport.exporter.verify import verify_package
from tests.packages import exported_package
from tests.publishers import publish_at_once
from tests.s3server import BUCKET, aws_test_env, moto_server

pytestmark = pytest.mark.xdist_group("l1-packages")

PUBLISHERS = 4
MODEL, TARGET = "efficientformer-l1", "onnx-fp32"
OTHER = {"efficientformer-l7": {"9.9.9": {"onnx-fp32": {"sha256": "0" * 64, "objects": {}}}}}  # listed before


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The session's l1 ONNX package as a bundle (verified: the publishers skip their verification)."""
    bundle = write_bundle(exported_package("onnx", tmp_path_factory)[0], tmp_path_factory.mktemp("bundle"))
    assert verify_package(bundle.path).passed
    return bundle


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    with aws_test_env(), moto_server(BUCKET) as endpoint:
        yield endpoint


def _run_publishers(bundle: Bundle, registry: str, endpoint: str | None) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PUBLISHERS), ctx.Queue()
    versions = [f"1.0.{n}" for n in range(PUBLISHERS)]
    processes = [ctx.Process(target=publish_at_once, args=(str(bundle.path), registry, endpoint, v, barrier, results))
                 for v in versions]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=180) for _ in processes]
    except queue.Empty:
        pytest.fail("a publisher process did not report within 180 s")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in processes] == [0] * PUBLISHERS
    return sorted(outcomes)


def _check(store: Store, bundle: Bundle, outcomes: list[tuple]) -> None:
    errors = [status for _, status, _, _ in outcomes if status.startswith("error")]
    assert errors == [], errors[0] if errors else ""
    assert [status for _, status, _, _ in outcomes] == ["published"] * PUBLISHERS
    won = [w for _, _, w, _ in outcomes]
    lost = sum(lost for _, _, _, lost in outcomes)
    # All four swapped the same index at once: one won, three saw the conflict (and so on as they retried).
    assert won == [1] * PUBLISHERS, f"swaps won per publisher: {won} (more than one means a write was lost)"
    assert lost >= PUBLISHERS - 1, f"only {lost} swaps lost: the publishers did not race"

    packages = read_index(store)["packages"]
    assert packages["efficientformer-l7"] == OTHER["efficientformer-l7"], "the entry listed before was lost"
    listed = packages.get(MODEL, {})
    assert sorted(listed) == [f"1.0.{n}" for n in range(PUBLISHERS)], f"entries lost: index lists {sorted(listed)}"
    for version, targets in listed.items():
        entry = targets[TARGET]
        assert entry["sha256"] == bundle.sha256 and entry["objects"][entry["bundle"]] == bundle.sha256
        assert entry["folder"] == f"{MODEL}/{version}/{TARGET}/{bundle.sha256[:16]}"
        for key, digest in entry["objects"].items():
            assert store.sha256(key) == digest, f"{version}: {key}"


def _seed(store: Store) -> None:
    """An index with one entry already, so the racing swaps are all If-Match on the same ETag."""
    assert store.swap_index(json.dumps({"schema": INDEX_SCHEMA, "packages": OTHER}).encode(), None)


def test_four_publisher_processes_on_one_directory_registry(bundle: Bundle, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    store = open_store(str(registry))
    _seed(store)
    _check(store, bundle, _run_publishers(bundle, str(registry), None))
    assert not any(p.name.startswith(".") and p.name != ".index.lock" for p in registry.iterdir())  # no temp files


def test_four_publisher_processes_on_one_s3_registry(bundle: Bundle, s3_endpoint: str) -> None:
    store = S3Store(BUCKET, "concurrent", s3_endpoint)
    _seed(store)
    _check(store, bundle, _run_publishers(bundle, f"s3://{BUCKET}/concurrent", s3_endpoint))
