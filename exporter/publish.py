"""Publishing verified packages to a registry: a local directory or an S3 bucket (AWS or S3-compatible).

Layout under the registry root (a directory, or ``s3://BUCKET/PREFIX``)::

    index.json
    <model>/<version>/<target>/<sha16>/
        <name>.zip              the bundle (exporter.bundle: the same package always gives the same bytes)
        <name>.zip.sha256       its sha256sum line
        manifest.json           the package's manifest, readable without downloading the bundle
        README.md               the package's model card
        model.sig               the package's signature (signed packages; also inside the bundle)
        evidence/<file>         each ``--evidence`` JSON file (benchmarks, reviews)

``<model>`` is e.g. ``efficientformer-l3`` and ``<target>`` e.g. ``coreml-fp16`` (the package name, split after
the variant); ``<sha16>`` is the first 16 hex digits of the bundle's sha256. ``index.json`` maps
``packages[model][version][target]`` to an entry naming the folder, every object's key and sha256, the signature
(its key and sha256, the signer as ``exporter.signing`` reads it, and whether it was verified against trust given
at publish), and a summary of the manifest (weights, parity, latency, tool versions, when it was published); see
``index_entry``.

Guarantees:

- Only a package that verifies (``exporter.verify``: schema, every file's sha256, parity re-run) and passes the
  publishing gates is published: parity passed on every runtime, trained weights (random-init only with
  ``allow_random_weights``), and what the package's target requires (``TargetSpec.publish_allowance``: a built
  engine for TensorRT, unless ``allow_no_engine``). A signature present is always checked (every file against
  it); ``trust`` (``signing.Trust``) can require one (``require_signature``) or one by a trusted signer.
- A version is immutable: publishing a different package under a published (model, version, target) is refused
  unless ``force``. Publishing the same package again (its directory or its bundle: bundles are reproducible)
  writes nothing and reports "unchanged"; if stored objects were damaged or lost, they are uploaded again
  ("repaired").
- Folders are content-addressed, so objects are written once and never overwritten in place: a ``force``
  replacement uploads a new folder, switches the index, and only then deletes the old folder.
- Every uploaded object is read back and its sha256 compared with the local one before the index names it.
- The index is written last, with a compare-and-swap (S3 ``If-Match`` / ``If-None-Match``; a read-compare-replace
  under a ``filelock`` lock locally): at every moment each index entry points at complete objects with the recorded
  sha256, and concurrent publishers cannot lose each other's entries.
- An interrupted publish leaves the index as it was; running it again completes it, re-using the objects
  that were already uploaded intact.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from filelock import FileLock

from efexport.exporter.bundle import CHECKSUM_SUFFIX, bundle_name, check_members, is_bundle, write_bundle
from efexport.exporter.errors import NotInRegistry, OutputError, PublishError, PublishRefused, UsageError, VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, read_manifest, sha256_of
from efexport.exporter.manifest_model import CheckpointWeights, LatencyEntry, Manifest, RandomInitWeights
from efexport.exporter.manifest_schema import typed_manifest
from efexport.exporter.output import FileContent, check_output_root, write_atomically
from efexport.exporter.signing import SIGNATURE_FILE, Trust, read_signature
from efexport.exporter.targets import TARGETS

INDEX_KEY = "index.json"
INDEX_SCHEMA = "efexport.registry-index/1"
LOCK_FILE = ".index.lock"
EVIDENCE_DIR = "evidence"
FOLDER_DIGITS = 16
INDEX_ATTEMPTS = 20  # each lost swap means another publisher listed its entry: with N at once, N - 1 retries
CONNECT_TIMEOUT_ENV = "EFEXPORT_S3_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
SEGMENT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_CHUNK = 1 << 20
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


def _card_file() -> str:
    from efexport.exporter.model_card import CARD_FILE

    return CARD_FILE


# ---------------------------------------------------------------------------------------------------- stores


class Store(Protocol):
    """Where a registry lives. Keys are relative POSIX paths under the registry root."""

    location: str  # the destination as a user names it: a path or s3://bucket/prefix

    def read(self, key: str) -> bytes | None: ...

    def sha256(self, key: str) -> str | None: ...

    def get_file(self, key: str, path: Path) -> bool: ...

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def read_index(self) -> tuple[bytes | None, str | None]: ...

    def swap_index(self, data: bytes, token: str | None) -> bool: ...

    def delete(self, prefix: str) -> None: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...


class LocalStore:
    """A registry in a local (or mounted) directory. Writes are atomic (``output.write_atomically``: temporary
    file beside the target, fsync, rename). The index is swapped holding a ``filelock.FileLock`` on
    ``<root>/.index.lock`` (``flock`` on POSIX, ``LockFileEx`` on Windows; a soft lock where the file system has
    neither)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*PurePosixPath(key).parts)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise PublishError(f"{self._path(key)}: cannot {action}: {exc.strerror or exc}") from None

    def read(self, key: str) -> bytes | None:
        with self._errors("read", key):
            try:
                return self._path(key).read_bytes()
            except FileNotFoundError:
                return None

    def sha256(self, key: str) -> str | None:
        path = self._path(key)
        with self._errors("read", key):
            if not path.is_file():
                return None
            return sha256_of(path)

    def get_file(self, key: str, path: Path) -> bool:
        """Copy the object ``key`` to ``path``; False when there is none."""
        with self._errors("read", key):
            try:
                with self._path(key).open("rb") as src, Path(path).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            except (FileNotFoundError, IsADirectoryError):
                return False
            return True

    def _write(self, key: str, content: FileContent) -> None:
        with self._errors("write", key):
            write_atomically(self._path(key), content)

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        def copy(f: BinaryIO) -> None:
            with Path(path).open("rb") as src:
                shutil.copyfileobj(src, f, _CHUNK)

        self._write(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, data)

    def read_index(self) -> tuple[bytes | None, str | None]:
        data = self.read(INDEX_KEY)
        return data, None if data is None else hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        # The lock file stays in place after release (filelock's Unix lock never unlinks it), so every publisher
        # locks the same inode; waiting is unbounded, as the index swap under it takes milliseconds.
        lock = FileLock(self._path(LOCK_FILE))
        with self._errors("lock", LOCK_FILE):
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def swap_index(self, data: bytes, token: str | None) -> bool:
        with self._index_lock():
            if self.read_index()[1] != token:
                return False
            self.put_bytes(INDEX_KEY, data)
            return True

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        with self._errors("delete", prefix):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in found if not any(part.startswith(".") for part in k.split("/")))


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Store:
    """A registry under ``s3://bucket/prefix``: AWS S3 or any S3-compatible store (MinIO, Ceph, R2...).

    Credentials, region and endpoint come from boto3's usual sources (AWS_* environment variables, profiles);
    ``endpoint_url`` overrides the endpoint. Every put sends a SHA256 checksum the server checks, and records
    the hex sha256 in the object's metadata. The index is swapped with conditional writes (If-Match on the ETag
    read, If-None-Match: * when there was none). The connect timeout is ``connect_timeout`` or
    ``$EFEXPORT_S3_CONNECT_TIMEOUT`` (seconds, default 10); retries follow botocore (``max_attempts`` or
    ``$AWS_MAX_ATTEMPTS``, standard mode).
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, *,
                 connect_timeout: float | None = None, max_attempts: int | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        timeout = connect_timeout if connect_timeout is not None else _env_seconds(CONNECT_TIMEOUT_ENV)
        retries: dict[str, Any] = {"mode": "standard"} | ({"max_attempts": max_attempts} if max_attempts else {})
        session = boto3.session.Session()
        region = os.environ.get("AWS_REGION") or session.region_name or "us-east-1"
        config = Config(connect_timeout=timeout, read_timeout=max(60.0, timeout), retries=retries)
        try:
            self.client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        except ValueError as exc:  # a malformed endpoint URL
            raise UsageError(f"--endpoint-url {endpoint_url}: {exc}") from None
        self.endpoint = self.client.meta.endpoint_url

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """botocore's exceptions as one-line PublishErrors naming the destination."""
        from botocore import exceptions as bx

        where = f"{self.location}/{key}" if key else self.location
        try:
            yield
        except bx.NoCredentialsError:
            raise PublishError(f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                bx.ConnectionClosedError) as exc:
            raise PublishError(f"{where}: cannot reach the S3 endpoint {self.endpoint} while {action}: {exc}") \
                from None
        except bx.ClientError as exc:
            raise PublishError(self._client_error(exc, action, where)) from None
        except bx.ParamValidationError as exc:
            raise UsageError(f"{where}: {exc}") from None
        except bx.BotoCoreError as exc:
            raise PublishError(f"{where}: {action} failed: {exc}") from None

    def _client_error(self, exc: Exception, action: str, where: str) -> str:
        code = _error_code(exc)
        message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or str(exc)
        if code == "NoSuchBucket":
            return f"{self.location}: bucket {self.bucket!r} does not exist at {self.endpoint}"
        if code in _DENIED_CODES:
            return f"{where}: access denied while {action} ({code}: {message}); check the credentials and bucket policy"
        return f"{where}: {action} failed: {code} {message}".rstrip()

    def read(self, key: str) -> bytes | None:
        body = self._get(key, "reading")
        return None if body is None else body["Body"].read()

    def _get(self, key: str, action: str) -> dict | None:
        from botocore.exceptions import ClientError

        with self._errors(action, key):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            except ClientError as exc:
                if _error_code(exc) in _MISSING_CODES:
                    return None
                raise

    def sha256(self, key: str) -> str | None:
        response = self._get(key, "reading back")
        if response is None:
            return None
        with self._errors("reading back", key):
            # Not hashlib.file_digest: it needs readinto(), which botocore's StreamingBody gained only in 2025,
            # after the oldest boto3 this package accepts.
            digest = hashlib.sha256()
            for block in response["Body"].iter_chunks(_CHUNK):
                digest.update(block)
            return digest.hexdigest()

    def get_file(self, key: str, path: Path) -> bool:
        """Download the object ``key`` to ``path`` (streamed); False when there is none."""
        response = self._get(key, "downloading")
        if response is None:
            return False
        with self._errors("downloading", key), Path(path).open("wb") as dst:
            for block in response["Body"].iter_chunks(_CHUNK):
                dst.write(block)
        return True

    def _put(self, key: str, body: Any, digest: str, **conditions: str) -> dict:
        return self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=body, ChecksumAlgorithm="SHA256",
                                      Metadata={"sha256": digest}, **conditions)

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        digest = sha256 or sha256_of(Path(path))
        with self._errors("uploading", key), Path(path).open("rb") as body:
            self._put(key, body, digest)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("uploading", key):
            self._put(key, data, hashlib.sha256(data).hexdigest())

    def read_index(self) -> tuple[bytes | None, str | None]:
        response = self._get(INDEX_KEY, "reading")
        if response is None:
            return None, None
        with self._errors("reading", INDEX_KEY):
            return response["Body"].read(), response["ETag"]

    def swap_index(self, data: bytes, token: str | None) -> bool:
        from botocore.exceptions import ClientError

        condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        with self._errors("writing", INDEX_KEY):
            try:
                self._put(INDEX_KEY, data, hashlib.sha256(data).hexdigest(), **condition)
            except ClientError as exc:
                if _error_code(exc) in _CONFLICT_CODES:
                    return False
                raise
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        full = self._full(prefix) if prefix else self.prefix + "/" if self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        found: list[str] = []
        with self._errors("listing", prefix or None):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                found += [item["Key"][strip:] for item in page.get("Contents", [])]
        return sorted(found)

    def delete(self, prefix: str) -> None:
        """The object ``prefix`` and every object under ``prefix/``."""
        keys = [self._full(k) for k in self.list_keys(prefix.rstrip("/") + "/")] + [self._full(prefix.rstrip("/"))]
        with self._errors("deleting", prefix):
            for start in range(0, len(keys), 1000):
                objects = [{"Key": k} for k in keys[start:start + 1000]]
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise PublishError(f"{self.location}/{first.get('Key')}: delete failed: {first.get('Code')} "
                                       f"{first.get('Message', '')}".rstrip())


def _env_seconds(name: str) -> float:
    value = os.environ.get(name)
    if not value:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"${name}={value!r}: not a number of seconds") from None


def open_store(dest: str, endpoint_url: str | None = None, *, create: bool = True, option: str = "--to") -> Store:
    """``s3://bucket[/prefix]`` -> S3Store; a local directory (existing or creatable) -> LocalStore. With
    ``create=False`` (reading: pull) a local registry must exist: NotInRegistry otherwise. ``option``: how the
    user named the registry, for messages."""
    url = _URL.match(dest)
    if url:
        scheme, rest = url[1].lower(), url[2]
        if scheme != "s3":
            kind = "destinations" if option == "--to" else "registries"
            raise UsageError(f"{option} {dest}: {scheme}:// {kind} are not supported; give a local directory "
                             "or s3://BUCKET/PREFIX (with --endpoint-url for S3-compatible stores)")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"{option} {dest}: no bucket name (s3://BUCKET/PREFIX)")
        return S3Store(bucket, prefix, endpoint_url)
    if endpoint_url:
        raise UsageError(f"--endpoint-url applies to s3:// destinations, not the directory {dest}")
    root = Path(dest).expanduser()
    if not create:
        if not root.is_dir():
            raise NotInRegistry(f"{option} {dest}: no such registry directory")
        return LocalStore(root)
    return LocalStore(_local_root(root))


def _local_root(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise UsageError(f"--to {root}: exists and is not a directory")
    try:
        check_output_root(root)
    except OutputError as exc:
        raise PublishError(f"{root}: cannot create or write the registry directory ({exc})") from None
    return root


# ---------------------------------------------------------------------------------------------------- the package


@dataclass(frozen=True)
class _Object:
    """One object to store: its key, sha256 and content (a file or bytes)."""

    key: str
    sha256: str
    bytes: int
    path: Path | None = None
    data: bytes | None = None

    @staticmethod
    def of_bytes(key: str, data: bytes) -> _Object:
        return _Object(key, hashlib.sha256(data).hexdigest(), len(data), data=data)

    def put(self, store: Store) -> None:
        if self.path is not None:
            store.put_file(self.key, self.path, self.sha256)
        else:
            store.put_bytes(self.key, self.data or b"")


@dataclass(frozen=True)
class _Evidence:
    name: str
    data: bytes


@dataclass(frozen=True)
class _Plan:
    """What one publish writes: identity, folder, objects, and the index entry (without published_at)."""

    model: str
    version: str
    target: str
    folder: str
    bundle: _Object
    objects: tuple[_Object, ...]
    entry: dict = field(default_factory=dict)


def _check_segment(value: str, what: str, error: type[Exception] = UsageError) -> str:
    if not SEGMENT.fullmatch(value or ""):
        raise error(f"{what} {value!r}: use letters, digits and . _ + - (not starting with . _ + -)")
    return value


def _read_evidence(paths: Sequence[Path]) -> list[_Evidence]:
    evidence: dict[str, _Evidence] = {}
    for path in map(Path, paths):
        try:
            data = path.read_bytes()
            json.loads(data)
        except OSError as exc:
            raise UsageError(f"--evidence {path}: cannot read it: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"--evidence {path}: not a JSON file ({exc})") from None
        name = _check_segment(path.name, "--evidence file name")
        if name in evidence:
            raise UsageError(f"--evidence {path}: two evidence files named {name!r}")
        evidence[name] = _Evidence(name, data)
    return [evidence[name] for name in sorted(evidence)]


def _bundle_json(bundle: Path) -> tuple[object, bytes, bytes | None]:
    """The manifest (as JSON data, and raw) and the model card from a bundle whose members are safe."""
    with zipfile.ZipFile(bundle) as archive:
        top = check_members(archive, str(bundle))
        raw = archive.read(f"{top}/{MANIFEST_FILE}")
        names = set(archive.namelist())
        card_member = f"{top}/{_card_file()}"
        card = archive.read(card_member) if card_member in names else None
    return json.loads(raw), raw, card


def _bundle_members(bundle: Path) -> tuple[Manifest, bytes, bytes | None]:
    """The manifest (typed and raw) and the model card from a verified bundle."""
    data, raw, card = _bundle_json(bundle)
    return typed_manifest(data, f"{bundle}: {MANIFEST_FILE}"), raw, card


def _identity(manifest: Manifest) -> tuple[str, str]:
    """(model, target) from the package name, e.g. efficientformer-l3-coreml-fp16 -> efficientformer-l3, coreml-fp16."""
    name = manifest.package.name
    target = f"{manifest.target.format}-{manifest.target.precision}"  # the family names the rest
    if not name.endswith("-" + target) or name == "-" + target:
        raise PublishRefused(f"package name {name!r} does not end with its target {target!r}")
    model = name.removesuffix("-" + target)
    if not model.endswith("-" + str(manifest.model.variant)):
        raise PublishRefused(f"package name {name!r} does not name its variant {manifest.model.variant!r}")
    return _check_segment(model, "model", PublishRefused), _check_segment(target, "target", PublishRefused)


def _weights_summary(weights: RandomInitWeights | CheckpointWeights) -> dict:
    if isinstance(weights, CheckpointWeights):
        return {"source": weights.source, "sha256": weights.sha256}
    return {"source": weights.source, "seed": weights.seed}


def _latency_summary(latency: Sequence[LatencyEntry]) -> list[dict]:
    rows = []
    for entry in latency:
        device = entry.device.model_extra or {}  # the machine's name (a GPU) or its cpu: facts beyond ``kind``
        rows.append({"backend": entry.backend, "measured": entry.measured, "batch_size": entry.batch_size,
                     "precision": entry.precision, "p50_ms": entry.stats_ms.p50, "p90_ms": entry.stats_ms.p90,
                     "device": device.get("name") or device.get("cpu")})
    return rows


def _signature_record(objects: Sequence[_Object], signature: dict | None) -> dict | None:
    """The index's record of the package's signature: where it is stored beside the bundle, and who signed (as
    verify reported it: ``verified`` only when trust was given at publish and it held)."""
    stored = next((o for o in objects if PurePosixPath(o.key).name == SIGNATURE_FILE), None)
    if stored is None or not signature or not signature.get("present"):
        return None
    return {"key": stored.key, "sha256": stored.sha256, "kind": signature.get("kind"),
            "signer": signature.get("signer"), "issuer": signature.get("issuer"),
            "verified": bool(signature.get("verified")), "trusted_by": signature.get("trusted_by")}


def index_entry(manifest: Manifest, folder: str, bundle: _Object, objects: Sequence[_Object],
                evidence: Sequence[_Evidence], signature: dict | None = None) -> dict:
    """The index's record of one published package (published_at is added when the index is written)."""
    by_name = {PurePosixPath(o.key).name: o for o in objects}
    card = by_name.get(_card_file())
    target, parity, versions = manifest.target, manifest.parity, manifest.versions
    return {
        "folder": folder,
        "bundle": bundle.key, "sha256": bundle.sha256, "bytes": bundle.bytes,
        "checksum_file": bundle.key + CHECKSUM_SUFFIX,
        "manifest": f"{folder}/{MANIFEST_FILE}",
        "card": card.key if card else None,
        "evidence": {e.name: {"key": f"{folder}/{EVIDENCE_DIR}/{e.name}",
                              "sha256": hashlib.sha256(e.data).hexdigest()} for e in evidence},
        "signature": _signature_record(objects, signature),
        "objects": {o.key: o.sha256 for o in objects},
        "variant": manifest.model.variant, "format": target.format, "precision": target.precision,
        "weights": _weights_summary(manifest.weights),
        "deployable": manifest.package.deployable,
        "parity": {"passed": parity.passed, "max_abs": parity.max_abs, "min_cosine": parity.min_cosine,
                   "top1_agreement": parity.top1_agreement},
        "latency": _latency_summary(manifest.latency),
        "efexport": {"version": versions.efexport, "git_commit": versions.efexport_git_commit},
    }


def _plan(bundle: Path, manifest: Manifest, raw_manifest: bytes, card: bytes | None, version: str,
          evidence: Sequence[_Evidence], signature: tuple[bytes, dict] | None = None) -> _Plan:
    model, target = _identity(manifest)
    digest = sha256_of(bundle)
    folder = f"{model}/{version}/{target}/{digest[:FOLDER_DIGITS]}"
    name = bundle_name(manifest)
    bundle_object = _Object(f"{folder}/{name}", digest, bundle.stat().st_size, path=bundle)
    objects = [bundle_object, _Object.of_bytes(f"{folder}/{name}{CHECKSUM_SUFFIX}", f"{digest}  {name}\n".encode()),
               _Object.of_bytes(f"{folder}/{MANIFEST_FILE}", raw_manifest)]
    if card is not None:
        objects.append(_Object.of_bytes(f"{folder}/{_card_file()}", card))
    if signature is not None:
        objects.append(_Object.of_bytes(f"{folder}/{SIGNATURE_FILE}", signature[0]))
    objects += [_Object.of_bytes(f"{folder}/{EVIDENCE_DIR}/{e.name}", e.data) for e in evidence]
    entry = index_entry(manifest, folder, bundle_object, objects, evidence, signature and signature[1])
    return _Plan(model, version, target, folder, bundle_object, tuple(objects), entry)


def gate_problems(manifest: Manifest, allow_random_weights: bool = False, **allowed: bool) -> list[str]:
    """Why the manifest's package may not be published (empty: it may): parity, weights, and what its target
    declares (``TargetSpec.publish_allowance``: e.g. a TensorRT package without its engine, unless
    ``allow_no_engine``)."""
    problems = []
    if not manifest.parity.passed:
        problems.append("the parity gate did not pass")
    for backend, report in (manifest.runtime_parity or {}).items():
        if not report.passed:
            problems.append(f"parity on {backend} did not pass")
    weights = manifest.weights
    if isinstance(weights, RandomInitWeights) and not allow_random_weights:
        problems.append(f"random-init weights (seed {weights.seed}): the model computes nothing meaningful; "
                        "pass --allow-random-weights to publish it anyway")
    allowance = TARGETS[manifest.target.format].publish_allowance
    if allowance and not allowed.get(allowance.param) and (why := allowance.blocks(manifest.target)):
        problems.append(why)
    return problems


def _verified_or_refused(source: Path, threads: int, trust: Trust | None = None) -> dict:
    """Verify the package (its signature as ``trust`` asks); PublishRefused when it fails. Returns the
    signature's report (``signing.SignatureReport.to_dict``)."""
    from efexport.exporter.verify import verify_package

    if trust is not None and (trust.require_signature or trust.given):  # refused now, not after the parity run
        try:
            unsigned = not read_signature(source).present
        except VerifyError as exc:
            raise PublishRefused(f"{source}: does not verify: {exc}") from None
        if unsigned:
            why = "--require-signature" if trust.require_signature else \
                f"a trusted signer is required ({trust.describe()})"
            raise PublishRefused(f"{source}: does not verify: unsigned: no {SIGNATURE_FILE} in the package, and {why}")
    try:
        report = verify_package(source, threads, trust=trust)
    except VerifyError as exc:
        raise PublishRefused(f"{source}: does not verify: {exc}") from None
    if not report.passed:
        more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise PublishRefused(f"{source}: does not verify: {'; '.join(report.problems[:3])}{more}")
    return report.signature


def recorded_version(source: Path) -> str:
    """The efexport version that made the package (``versions.efexport`` of its manifest): the default --version."""
    try:
        return typed_manifest(_package_json(source), MANIFEST_FILE).versions.efexport
    except VerifyError as exc:
        raise PublishRefused(f"{source}: does not verify, so versions/efexport (the default --version) cannot be "
                             f"read: {exc}") from None


def package_manifest(source: Path) -> Manifest:
    """The manifest of a package directory or bundle (to name a default version before publishing); PublishRefused
    when it cannot be read or does not follow its schema."""
    try:
        return typed_manifest(_package_json(source), MANIFEST_FILE)
    except VerifyError as exc:
        raise PublishRefused(f"{source}: does not verify: {exc}") from None


def _package_json(source: Path) -> object:
    """The manifest of a package directory or bundle as JSON data, not checked yet; PublishRefused when there is
    none or it cannot be read."""
    source = Path(source)
    if is_bundle(source):
        try:
            return _bundle_json(source)[0]
        except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise PublishRefused(f"{source}: not a readable bundle ({exc})") from None
        except VerifyError as exc:
            raise PublishRefused(f"{source}: {exc}") from None
    try:
        return read_manifest(source)
    except VerifyError as exc:
        raise PublishRefused(str(exc)) from None


# ---------------------------------------------------------------------------------------------------- the index


def _load_index(data: bytes | None, location: str) -> dict:
    if data is None:
        return {"schema": INDEX_SCHEMA, "packages": {}}
    try:
        index = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PublishError(f"{location}/{INDEX_KEY}: unreadable ({exc}); refusing to overwrite it") from None
    packages = index.get("packages") if isinstance(index, dict) else None
    if not isinstance(packages, dict) or index.get("schema") != INDEX_SCHEMA:
        raise PublishError(f"{location}/{INDEX_KEY}: not an {INDEX_SCHEMA} index; refusing to overwrite it")
    return index


def read_index(store: Store, missing_ok: bool = True) -> dict:
    """The registry's index (an empty one when there is none yet; NotInRegistry then unless ``missing_ok``)."""
    data = store.read_index()[0]
    if data is None and not missing_ok:
        raise NotInRegistry(f"{store.location}: no {INDEX_KEY}: not an efexport registry, or nothing published yet")
    return _load_index(data, store.location)


def _entry_of(index: dict, model: str, version: str, target: str) -> dict | None:
    return index["packages"].get(model, {}).get(version, {}).get(target)


def _dump_index(index: dict) -> bytes:
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def _update_index(store: Store, change: Callable[[dict], dict | None]) -> dict:
    """Read-modify-write with compare-and-swap; ``change`` returns the new index, or None to write nothing."""
    for attempt in range(INDEX_ATTEMPTS):
        if attempt:  # a random pause, growing: publishers that lost the same swap do not meet again at once
            time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 6)))
        data, token = store.read_index()
        index = _load_index(data, store.location)
        new = change(index)
        if new is None or store.swap_index(_dump_index(new), token):
            return index if new is None else new
    raise PublishError(f"{store.location}/{INDEX_KEY}: changed by someone else {INDEX_ATTEMPTS} times in a row "
                       "while publishing; nothing was listed, run publish again")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------------- latency


def _version_order(a: tuple[str, dict], b: tuple[str, dict]) -> int:
    """Order (version, entry) pairs: by packaging's Version when both parse, else by published_at."""
    from packaging.version import InvalidVersion, Version

    try:
        left, right = Version(a[0]), Version(b[0])
        return (left > right) - (left < right)
    except InvalidVersion:
        first, second = a[1].get("published_at") or "", b[1].get("published_at") or ""
        return (first > second) - (first < second)


def version_order(versions: dict[str, dict]) -> list[str]:
    """The versions of ``versions`` ({version: entry}) oldest first, in the order publish compares them."""
    return [v for v, _ in sorted(versions.items(), key=functools.cmp_to_key(_version_order))]


def latency_comparison(index: dict, model: str, version: str, target: str, entry: dict) -> list[dict]:
    """Each latency row of ``entry`` against the previous version of the same model and target (matched on
    backend, measured, batch size and precision): previous p50, new p50 and their ratio new/previous."""
    versions = index["packages"].get(model, {})
    current = (version, entry)
    earlier = [(v, targets[target]) for v, targets in versions.items()
               if v != version and target in targets and _version_order((v, targets[target]), current) < 0]
    if not earlier:
        return []
    previous_version, previous = max(earlier, key=functools.cmp_to_key(_version_order))

    def key(row: dict) -> tuple:
        return row.get("backend"), row.get("measured"), row.get("batch_size"), row.get("precision")

    before = {key(row): row for row in previous.get("latency", [])}
    rows = []
    for row in entry.get("latency", []):
        old = before.get(key(row))
        if old and old.get("p50_ms") and row.get("p50_ms") is not None:
            rows.append({"backend": row["backend"], "measured": row["measured"], "batch_size": row["batch_size"],
                         "precision": row["precision"], "previous_version": previous_version,
                         "previous_p50_ms": old["p50_ms"], "p50_ms": row["p50_ms"],
                         "ratio": row["p50_ms"] / old["p50_ms"]})
    return rows


# ---------------------------------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class PublishResult:
    status: str  # published | unchanged | replaced | repaired
    destination: str
    model: str
    version: str
    target: str
    folder: str
    sha256: str
    keys: tuple[str, ...]
    latency_comparison: tuple[dict, ...] = ()
    signature: dict | None = None  # the index entry's signature record (None: unsigned)

    def to_dict(self) -> dict:
        return asdict(self) | {"keys": list(self.keys), "latency_comparison": list(self.latency_comparison)}


def _intact(store: Store, entry: dict) -> bool:
    return all(store.sha256(key) == digest for key, digest in entry.get("objects", {}).items())


def _upload(store: Store, objects: Sequence[_Object]) -> None:
    """Upload what is not already stored intact, then read every upload back and compare its sha256."""
    uploaded = []
    for obj in objects:
        if store.sha256(obj.key) != obj.sha256:
            obj.put(store)
            uploaded.append(obj)
    for obj in uploaded:
        stored = store.sha256(obj.key)
        if stored != obj.sha256:
            got = "missing" if stored is None else f"sha256 {stored[:12]}"
            raise PublishError(f"{store.location}/{obj.key}: the upload did not verify ({got} stored, "
                               f"{obj.sha256[:12]} sent); nothing was listed in the index")


def _same_publication(entry: dict, plan: _Plan) -> bool:
    return entry.get("sha256") == plan.entry["sha256"] and entry.get("evidence") == plan.entry["evidence"]


def _conflict(plan: _Plan, existing: dict) -> PublishRefused:
    what = f"{plan.model} {plan.version} {plan.target}"
    if existing.get("sha256") == plan.entry["sha256"]:
        return PublishRefused(f"{what} is already published with other evidence files; pass --force to replace them")
    theirs, ours = str(existing.get("sha256"))[:12], plan.entry["sha256"][:12]
    return PublishRefused(f"{what} is already published as a different package (sha256 {theirs}, this one {ours}); "
                          "publish under a new --version, or pass --force to replace it")


def _switch_index(store: Store, plan: _Plan, force: bool) -> tuple[dict, dict | None, dict]:
    """List the plan's entry in the index; returns (index written, entry it replaced, entry now listed)."""
    replaced: list[dict | None] = [None]
    listed: list[dict] = [plan.entry]

    def change(index: dict) -> dict | None:
        existing = _entry_of(index, plan.model, plan.version, plan.target)
        replaced[0], listed[0] = existing, existing or plan.entry
        if existing is not None and _same_publication(existing, plan):
            return None  # an identical publish finished first
        if existing is not None and not force:
            raise _conflict(plan, existing)  # published by someone else meanwhile
        listed[0] = plan.entry | {"published_at": _now()}
        index["packages"].setdefault(plan.model, {}).setdefault(plan.version, {})[plan.target] = listed[0]
        return index

    for _ in range(INDEX_ATTEMPTS):
        index = _update_index(store, change)
        # Read back, as every upload is: entries are never removed, so a missing one means the server let another
        # conditional write through at the same moment (a compare-and-swap that is not atomic); list it again.
        if _entry_of(read_index(store), plan.model, plan.version, plan.target) is not None:
            return index, replaced[0], listed[0]
    raise PublishError(f"{store.location}/{INDEX_KEY}: the entry for {plan.model} {plan.version} {plan.target} was "
                       f"lost {INDEX_ATTEMPTS} times after the index was written (does the server honour "
                       "conditional writes?); run publish again")


def _remove_replaced(store: Store, old: dict, new: dict) -> None:
    """After the index switched: the old folder, or (same folder, new evidence) the objects no longer listed."""
    if old["folder"] != new["folder"]:
        store.delete(old["folder"])
        return
    for key in sorted(set(old.get("objects", {})) - set(new["objects"])):
        store.delete(key)


def _result(status: str, store: Store, plan: _Plan, index: dict, entry: dict) -> PublishResult:
    comparison = latency_comparison(index, plan.model, plan.version, plan.target, entry)
    return PublishResult(status, store.location, plan.model, plan.version, plan.target, entry["folder"],
                         entry["sha256"], tuple(sorted(entry.get("objects", {}))), tuple(comparison),
                         entry.get("signature"))


def _publish_bundle(bundle: Path, store: Store, plan: _Plan, force: bool) -> PublishResult:
    index = read_index(store)
    existing = _entry_of(index, plan.model, plan.version, plan.target)
    if existing is not None and _same_publication(existing, plan):
        if _intact(store, existing):
            return _result("unchanged", store, plan, index, existing)
        _upload(store, plan.objects)
        return _result("repaired", store, plan, index, existing)
    if existing is not None and not force:
        raise _conflict(plan, existing)
    _upload(store, plan.objects)
    index, replaced, listed = _switch_index(store, plan, force)
    if replaced is not None and _same_publication(replaced, plan):
        return _result("unchanged", store, plan, index, listed)
    if replaced is not None:
        _remove_replaced(store, replaced, listed)
    return _result("published" if replaced is None else "replaced", store, plan, index, listed)


def _bundle_signature(bundle: Path) -> bytes | None:
    """The signature inside a (checked) bundle, or None for an unsigned package."""
    with zipfile.ZipFile(bundle) as archive:
        member = f"{check_members(archive, str(bundle))}/{SIGNATURE_FILE}"
        return archive.read(member) if member in archive.namelist() else None


def publish(source: Path, store: Store, version: str | None = None, *, allow_random_weights: bool = False,
            force: bool = False, evidence: Sequence[Path] = (), threads: int = 2, trust: Trust | None = None,
            **allowed: bool) -> PublishResult:
    """Verify the package (directory or bundle) at ``source``, check the gates, and publish its bundle, model
    card, manifest, signature and evidence under ``version`` (default: the efexport version that made the
    package). ``trust``: who must have signed it (``signing.Trust``: trusted keys, a keyless identity, a
    certificate chain, ``require_signature``; default: a signature present is checked, none is required).
    ``allowed``: the targets' publish allowances that were given, by parameter name (``allow_no_engine``)."""
    source = Path(source)
    if not source.exists():  # refused like any other path that is no package (a directory without one: 10)
        raise PublishRefused(f"{source}: no such package directory or bundle")
    if trust is not None:
        trust.check()  # unusable trust options are a usage error, before anything else
    version = _check_segment(version or recorded_version(source), "--version")
    evidence_files = _read_evidence(evidence)
    read_index(store)  # an unreachable, denied or missing destination fails now, not after verification
    signature = _verified_or_refused(source, threads, trust)
    with tempfile.TemporaryDirectory(prefix="efexport-publish-") as scratch:
        bundle = source if is_bundle(source) else write_bundle(source, Path(scratch)).path
        manifest, raw_manifest, card = _bundle_members(bundle)
        problems = gate_problems(manifest, allow_random_weights, **allowed)
        if problems:
            raise PublishRefused(f"{source}: may not be published: {'; '.join(problems)}")
        signed = _bundle_signature(bundle)
        if signed is None and signature.get("present"):
            raise PublishRefused(f"{source}: the package is signed but its bundle carries no {SIGNATURE_FILE}")
        plan = _plan(bundle, manifest, raw_manifest, card, version, evidence_files,
                     None if signed is None else (signed, signature))
        return _publish_bundle(bundle, store, plan, force)


__all__ = ["INDEX_KEY", "INDEX_SCHEMA", "LocalStore", "PublishResult", "S3Store", "Store", "gate_problems",
           "index_entry", "latency_comparison", "open_store", "package_manifest", "publish", "read_index",
           "version_order"]
