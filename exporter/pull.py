"""Pulling a published package out of a registry (a directory or ``s3://bucket/prefix``, as publish writes it).

In order, and nothing is written to the destination before the last step:

1. the index names the package: ``--version latest`` is the highest version holding the target, in the order
   publish compares versions (``publish.version_order``); a model, version or target that is not there is
   refused naming what is (NotInRegistry, exit 12);
2. the bundle is downloaded into a private temporary folder and its sha256 compared with the index entry's and
   with the ``.sha256`` object beside it (VerifyError, exit 6, on any difference);
3. the bundle is opened safely (``bundle.opened_bundle``: members checked before extraction) and its signature
   checked (``exporter.signing``): with trust options (trusted keys, or a keyless identity and issuer) a valid
   signature from a trusted signer is required; without them a present signature is still verified for
   integrity and its signer reported; ``require_signature`` refuses an unsigned package;
4. the package's own verification runs (``verify.verify_artifact``: schema, every file's sha256, parity on the
   runtimes present here);
5. only then is the package copied into a staging folder beside ``OUT/<package name>`` (same file system), its
   files' sha256 checked once more against the manifest, and the folder renamed into place
   (``output.staged_output``: an existing package is refused unless ``force``, which replaces it atomically).

Any refusal leaves nothing in the destination: no package folder, no staging folder, no temporary file, and an
output folder created for the pull is removed again.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from efexport.exporter.bundle import BUNDLE_SUFFIX, opened_bundle
from efexport.exporter.errors import NotInRegistry, OutputError, PublishError, VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, sha256_of
from efexport.exporter.output import staged_output
from efexport.exporter.provenance import read_statement
from efexport.exporter.publish import SEGMENT, Store, read_index, version_order
from efexport.exporter.signing import PROVENANCE_FILE, Trust, check_signature

if TYPE_CHECKING:
    from efexport.exporter.verify import VerifyReport

LATEST = "latest"
_SHOWN = 3  # problems named in a refusal before "and N more"


@dataclass(frozen=True)
class PullResult:
    status: str  # pulled | replaced
    registry: str
    model: str
    version: str
    requested_version: str  # as asked: a version or "latest"
    target: str
    path: str  # OUT/<package name>
    sha256: str
    bundle: str  # the bundle's key in the registry
    published_at: str | None
    signature: dict  # signing.SignatureReport.to_dict(): status, kind, signer, issuer, verified, trusted_by
    provenance: list[dict] = field(default_factory=list)  # each statement: in the package, in the registry
    verify: dict = field(default_factory=dict)  # files checked, parity, runtimes checked and not checked here

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- the index


def resolve(index: dict, location: str, model: str, version: str, target: str) -> tuple[str, dict]:
    """(version, index entry) of ``model``/``version``/``target``; NotInRegistry naming what exists otherwise."""
    packages = index["packages"]
    if not isinstance(packages.get(model, {}), dict) or \
            not all(isinstance(e, dict) for e in packages.get(model, {}).values()):
        raise PublishError(f"{location}: the index's entry for {model} is malformed")
    if model not in packages:
        held = ", ".join(sorted(packages)) or "nothing yet"
        raise NotInRegistry(f"{location}: no model {model!r}; the registry holds: {held}")
    versions = packages[model]
    if version == LATEST:
        holding = [v for v in version_order(versions) if target in versions[v]]
        if not holding:
            targets = sorted({t for entries in versions.values() for t in entries})
            raise NotInRegistry(f"{location}: no version of {model} has target {target!r}; its targets: "
                                f"{', '.join(targets) or 'none'}")
        version = holding[-1]
    elif version not in versions:
        raise NotInRegistry(f"{location}: {model} has no version {version!r}; available: "
                            f"{', '.join(version_order(versions)) or 'none'}")
    entries = versions[version]
    if target not in entries:
        raise NotInRegistry(f"{location}: {model} {version} has no target {target!r}; available: "
                            f"{', '.join(sorted(entries)) or 'none'}")
    if not isinstance(entries[target], dict):
        raise PublishError(f"{location}: the index's entry for {model} {version} {target} is malformed")
    return version, entries[target]


def _key(value: object, where: str) -> str:
    """A key the index names, as a relative path inside the registry (a malformed index must not make pull read
    elsewhere)."""
    parts = PurePosixPath(str(value)).parts
    if not isinstance(value, str) or not parts or value.startswith("/") or "\\" in value or ".." in parts:
        raise PublishError(f"{where}: the index names {value!r}, which is not a key inside the registry")
    return value


def _package_name(entry: dict, where: str) -> str:
    name = PurePosixPath(_key(entry.get("bundle"), where)).name.removesuffix(BUNDLE_SUFFIX)
    if not SEGMENT.fullmatch(name) or not str(entry.get("bundle", "")).endswith(BUNDLE_SUFFIX):
        raise PublishError(f"{where}: the index entry names no usable bundle ({entry.get('bundle')!r})")
    if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
        raise PublishError(f"{where}: the index entry records no sha256 for its bundle")
    return name


# ---------------------------------------------------------------------------------------------------- download


def _download(store: Store, entry: dict, into: Path, where: str) -> Path:
    """The bundle, downloaded into ``into`` and checked against the index's sha256 and the .sha256 object."""
    key = entry["bundle"]
    local = into / PurePosixPath(key).name
    if not store.get_file(key, local):
        raise PublishError(f"{store.location}/{key}: listed in the index for {where} but missing from the registry")
    digest = sha256_of(local)
    if digest != entry["sha256"]:
        raise VerifyError(f"{store.location}/{key}: sha256 {digest[:16]} differs from the index's "
                          f"{entry['sha256'][:16]} (the bundle was modified or damaged); refused")
    checksum_key = entry.get("checksum_file")
    if checksum_key:
        checksum_key = _key(checksum_key, f"{store.location}: {where}")
        line = store.read(checksum_key)
        if line is None:
            raise VerifyError(f"{store.location}/{checksum_key}: the bundle's checksum object is missing; refused")
        fields = line.decode(errors="replace").split()
        if len(fields) != 2 or fields[0].lower() != digest or fields[1].lstrip("*") != local.name:
            raise VerifyError(f"{store.location}/{checksum_key}: does not match the bundle (sha256 {digest[:16]}); "
                              "refused")
    return local


# ---------------------------------------------------------------------------------------------------- signature


def _signature_or_refused(package: Path, trust: Trust, where: str) -> dict:
    """The package's signature checked as ``trust`` asks (before the slower parity run); VerifyError naming every
    problem: an unsigned package under trust or require_signature, another signer, a changed file."""
    report = check_signature(package, trust)
    if not report.passed:
        raise VerifyError(f"{where}: signature refused: {'; '.join(report.problems[:_SHOWN])}"
                          + (f" (and {len(report.problems) - _SHOWN} more)" if len(report.problems) > _SHOWN else ""))
    return report.to_dict()


# ---------------------------------------------------------------------------------------------------- provenance


def _registry_provenance(store: Store, entry: dict, package: Path, scratch: Path) -> dict | None:
    """The entry's ``evidence/provenance.intoto.json``, checked against its recorded sha256, read as a statement
    and its subjects compared with the package's files (differences are reported, not refused: evidence is the
    publisher's word, not covered by the signature)."""
    record = (entry.get("evidence") or {}).get(PROVENANCE_FILE)
    if not isinstance(record, dict) or not record.get("key"):
        return None
    key = _key(record["key"], store.location)
    local = scratch / PROVENANCE_FILE
    if not store.get_file(key, local):
        raise PublishError(f"{store.location}/{key}: listed as evidence but missing from the registry")
    if sha256_of(local) != record.get("sha256"):
        raise VerifyError(f"{store.location}/{key}: sha256 differs from the index's (modified?); refused")
    try:
        statement = read_statement(local)
    except (ValueError, OSError) as exc:
        return {"source": "registry", "key": key, "present": True, "problems": [f"{key}: {exc}"]}
    files = _digests(package)
    subjects = {s.name: s.digest.get("sha256") for s in statement.subject if s.name is not None}
    problems = [f"{key}: subject {name}: not this package's file (sha256 differs or no such file)"
                for name, digest in subjects.items() if files.get(name) != digest]
    predicate = statement.predicate
    metadata = predicate.runDetails.metadata
    return {"source": "registry", "key": key, "present": True, "builder": predicate.runDetails.builder.id,
            "invocation": metadata.invocationId if metadata else None,
            "inputs": dict(predicate.buildDefinition.externalParameters),
            "dependencies": [d.model_dump(mode="json", exclude_none=True)
                             for d in predicate.buildDefinition.resolvedDependencies],
            "subjects": len(subjects), "problems": problems}


# ---------------------------------------------------------------------------------------------------- pull


def _refuse_unless_passed(report: VerifyReport, where: str) -> None:
    if report.passed:
        return
    problems = report.problems
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    raise VerifyError(f"{where}: does not verify: {'; '.join(problems[:_SHOWN])}{more}; refused")


def _verify_summary(report: VerifyReport) -> dict:
    parity = report.parity
    return {"passed": report.passed, "files_checked": report.files_checked,
            "parity": None if parity is None else {"max_abs": parity.max_abs, "min_cosine": parity.min_cosine,
                                                   "passed": parity.passed},
            "runtime_parity": {k: {"max_abs": v.get("max_abs"), "min_cosine": v.get("min_cosine"),
                                   "passed": v.get("passed")} for k, v in report.runtime_parity.items()},
            "not_checked_here": dict(report.not_checked_here)}


def _digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (the manifest, signature and statement included), by path."""
    return {p.relative_to(directory).as_posix(): sha256_of(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def _copy_checked(package: Path, staging: Path, verified: dict[str, str]) -> None:
    """Copy the verified package into the staging folder, then check the copy file by file."""
    for path in sorted(package.rglob("*")):
        target = staging / path.relative_to(package)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    if _digests(staging) != verified:
        raise VerifyError(f"{staging}: the copy differs from the verified package; refused")


def pull(store: Store, model: str, version: str, target: str, out_dir: Path, *, trust: Trust | None = None,
         force: bool = False, threads: int = 2, progress: Callable[[str], None] | None = None) -> PullResult:
    """Download, check and install ``model``/``version``/``target`` from ``store`` as ``out_dir/<package name>``."""
    from efexport.exporter.verify import verify_artifact  # torch: not for the refusals before verification

    say = progress or (lambda _message: None)
    trust = trust or Trust()
    trust.check()
    index = read_index(store, missing_ok=False)
    resolved, entry = resolve(index, store.location, model, version, target)
    where = f"{model} {resolved} {target}"
    name = _package_name(entry, f"{store.location}: {where}")
    final = Path(out_dir) / name
    if final.exists() and not force:
        raise OutputError(f"{final} already exists; pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix="efexport-pull-") as scratch:
        say(f"downloading {entry['bundle']}")
        bundle = _download(store, entry, Path(scratch), where)
        with opened_bundle(bundle) as package:
            if package.name != name:
                raise VerifyError(f"{store.location}/{entry['bundle']}: its folder {package.name!r} is not the "
                                  f"package {name!r}; refused")
            say("checking the signature")
            signature = _signature_or_refused(package, trust, f"{store.location}/{entry['bundle']}")
            say("verifying the package (schema, file hashes, signature, provenance, parity)")
            report = verify_artifact(package, threads, trust=trust)
            _refuse_unless_passed(report, f"{store.location}/{entry['bundle']}")
            provenance = [{"source": "package", "key": PROVENANCE_FILE} | report.provenance] \
                if report.provenance else []
            registry_statement = _registry_provenance(store, entry, package, Path(scratch))
            provenance += [registry_statement] if registry_statement else []
            if report.package.get("name") != name:
                raise VerifyError(f"{store.location}/{entry['bundle']}: the manifest names the package "
                                  f"{report.package.get('name')!r}, not {name!r}; refused")
            verified = _digests(package)
            existed = final.exists()
            with staged_output(final, force) as staging:
                _copy_checked(package, staging, verified)
    return PullResult("replaced" if existed else "pulled", store.location, model, resolved, version, target,
                      str(final), entry["sha256"], entry["bundle"], entry.get("published_at"), signature,
                      provenance, _verify_summary(report))


__all__ = ["LATEST", "MANIFEST_FILE", "PullResult", "Trust", "pull", "resolve"]
