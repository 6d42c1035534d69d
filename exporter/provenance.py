"""Provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate, ``provenance.intoto.json`` in the
package directory (``efexport provenance``).

Subjects: every file of the package (``manifest.json`` included) with its sha256, except the signature and the
statement itself. The predicate says how the package was made:

- ``buildDefinition.externalParameters``: variant, target, precision, the recipe (file name and sha256), the
  weights (checkpoint file, sha256 and URL when given; or random-init and its seed);
- ``buildDefinition.internalParameters``: the runner (GitHub Actions' RUNNER_* when set, else this machine) and,
  in GitHub Actions, the event, workflow and run attempt;
- ``buildDefinition.resolvedDependencies``: the checkpoint (its URL when given, its sha256 from the manifest's
  weights block) and efexport (its version and the git commit of the manifest's tool versions, else GITHUB_SHA;
  the repository from GITHUB_SERVER_URL/GITHUB_REPOSITORY when set);
- ``runDetails.builder.id``: the GitHub Actions run URL (GITHUB_SERVER_URL/GITHUB_REPOSITORY/actions/runs/
  GITHUB_RUN_ID) when set, else ``--builder-id``, else ``urn:efexport:local:<host name>``;
- ``runDetails.metadata``: invocationId (the run attempt's URL in GitHub Actions, else a random UUID URN),
  startedOn (``--started-on``, e.g. the job's start; omitted when not known: a manifest records no time, so that
  the same inputs give the same package) and finishedOn (when the statement was written).

It is written before signing (``efexport sign`` refuses nothing here, but a statement written after a signature
would not be covered by it: ``write_provenance`` refuses a signed package). ``check_provenance`` (verify) reads it
back: its shape, and its subjects against the files (a file that differs, is missing or is not a subject is
named), and reports the builder and inputs. The statement is not itself a signature: the package's signature
is what makes it trustworthy.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from efexport.exporter.errors import OutputError, UsageError, VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, sha256_of
from efexport.exporter.output import write_atomically
from efexport.exporter.signing import PROVENANCE_FILE, SIGNATURE_FILE, SigningInputError, package_file_problems

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:efexport:build-type:package:v1"  # what externalParameters/internalParameters mean: this module
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
MAX_PROVENANCE_BYTES = 16 << 20


class _Shape(BaseModel):
    """Blocks of the statement: known fields typed, others allowed (the specs let producers add fields)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ResourceDescriptor(_Shape):
    name: str | None = None
    uri: str | None = None
    digest: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, Any] | None = None


class BuildDefinition(_Shape):
    buildType: str  # the specs' field names, as they are
    externalParameters: dict[str, Any]
    internalParameters: dict[str, Any] | None = None
    resolvedDependencies: list[ResourceDescriptor] = Field(default_factory=list)


class Builder(_Shape):
    id: str
    version: dict[str, str] | None = None


class BuildMetadata(_Shape):
    invocationId: str | None = None
    startedOn: str | None = None
    finishedOn: str | None = None


class RunDetails(_Shape):
    builder: Builder
    metadata: BuildMetadata | None = None


class SlsaProvenance(_Shape):
    buildDefinition: BuildDefinition
    runDetails: RunDetails


class Statement(_Shape):
    """An in-toto Statement v1 carrying SLSA Provenance v1."""

    type: Literal["https://in-toto.io/Statement/v1"] = Field(STATEMENT_TYPE, alias="_type")
    subject: list[ResourceDescriptor] = Field(min_length=1)
    predicateType: Literal["https://slsa.dev/provenance/v1"] = SLSA_PROVENANCE
    predicate: SlsaProvenance

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2) + "\n"


@dataclass(frozen=True)
class ProvenanceReport:
    """What verify says of a package's provenance: present, builder, inputs (the external parameters and the
    resolved dependencies, shortened), subjects, problems (files named)."""

    present: bool
    builder: str | None = None
    invocation: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    dependencies: list[dict[str, Any]] = field(default_factory=list)
    subjects: int = 0
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"present": self.present, "builder": self.builder, "invocation": self.invocation,
                "inputs": self.inputs, "dependencies": self.dependencies, "subjects": self.subjects,
                "problems": list(self.problems)}


def _subject_files(package_dir: Path) -> dict[str, str]:
    """sha256 of every file the statement covers: all but the signature and the statement."""
    return {p.relative_to(package_dir).as_posix(): sha256_of(p) for p in sorted(package_dir.rglob("*"))
            if p.is_file() and p.relative_to(package_dir).as_posix() not in (SIGNATURE_FILE, PROVENANCE_FILE)}


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _github(env: Mapping[str, str]) -> dict[str, str] | None:
    """server, repository, run id, attempt, sha, ref, workflow ref, event: when running in GitHub Actions."""
    if not (env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID")):
        return None
    keys = ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_SHA",
            "GITHUB_REF", "GITHUB_WORKFLOW_REF", "GITHUB_EVENT_NAME", "GITHUB_REPOSITORY_ID")
    found = {key: env[key] for key in keys if env.get(key)}
    found.setdefault("GITHUB_SERVER_URL", "https://github.com")
    return found


def _runner(env: Mapping[str, str]) -> dict[str, str]:
    import platform

    if env.get("RUNNER_OS"):
        return {key.removeprefix("RUNNER_").lower(): env[key] for key in
                ("RUNNER_OS", "RUNNER_ARCH", "RUNNER_NAME", "RUNNER_ENVIRONMENT") if env.get(key)}
    return {"os": platform.system(), "arch": platform.machine(), "name": socket.gethostname()}


def build_statement(package_dir: Path, *, checkpoint_url: str | None = None, builder_id: str | None = None,
                    started_on: str | None = None, env: Mapping[str, str] | None = None) -> Statement:
    """The provenance statement of the package directory ``package_dir`` (its manifest and files, and the
    environment ``env``, os.environ by default)."""
    from efexport.exporter.manifest_model import CheckpointWeights
    from efexport.exporter.manifest_schema import load_manifest

    env = os.environ if env is None else env
    package_dir = Path(package_dir)
    manifest = load_manifest(package_dir)  # VerifyError: not a package, or a broken manifest
    weights = manifest.weights
    if checkpoint_url is not None and not isinstance(weights, CheckpointWeights):
        raise UsageError(f"--checkpoint-url {checkpoint_url}: the package holds random-init weights, no checkpoint")
    github = _github(env)
    values = manifest.recipe.values
    external: dict[str, Any] = {
        "package": manifest.package.name,
        "variant": manifest.model.variant,
        "target": values.target,
        "precision": values.precision,
        "recipe": {"file": manifest.recipe.file, "sha256": manifest.recipe.file_sha256},
    }
    dependencies: list[ResourceDescriptor] = []
    if isinstance(weights, CheckpointWeights):
        external["weights"] = {"source": "checkpoint", "file": weights.file, "sha256": weights.sha256,
                               **({"url": checkpoint_url} if checkpoint_url else {})}
        dependencies.append(ResourceDescriptor(
            name=weights.file, uri=checkpoint_url, digest={"sha256": weights.sha256},
            annotations={"format": weights.format, "layout": weights.layout}))
    else:
        external["weights"] = {"source": "random-init", "seed": weights.seed}
    versions = manifest.versions
    commit = versions.efexport_git_commit
    dirty = bool(commit and commit.endswith("-dirty"))
    commit = (commit.removesuffix("-dirty") if commit else None) or (github or {}).get("GITHUB_SHA")
    source = (f"git+{github['GITHUB_SERVER_URL']}/{github['GITHUB_REPOSITORY']}"
              + (f"@{github['GITHUB_REF']}" if github.get("GITHUB_REF") else "")) if github else None
    efexport_annotations: dict[str, Any] = {"version": versions.efexport}
    if dirty:
        efexport_annotations["dirty"] = True  # the checkout had local changes: the commit alone does not rebuild it
    dependencies.append(ResourceDescriptor(
        name="efexport", uri=source or f"pkg:pypi/efexport@{versions.efexport}",
        digest={"gitCommit": commit} if commit else {}, annotations=efexport_annotations))
    internal: dict[str, Any] = {"runner": _runner(env), "python": versions.python}
    if github:
        internal["github"] = {key.removeprefix("GITHUB_").lower(): value for key, value in github.items()
                              if key in ("GITHUB_EVENT_NAME", "GITHUB_WORKFLOW_REF", "GITHUB_RUN_ATTEMPT",
                                         "GITHUB_REPOSITORY_ID", "GITHUB_SHA")}
        run_url = f"{github['GITHUB_SERVER_URL']}/{github['GITHUB_REPOSITORY']}/actions/runs/{github['GITHUB_RUN_ID']}"
        builder = run_url
        invocation = f"{run_url}/attempts/{github.get('GITHUB_RUN_ATTEMPT', '1')}"
    else:
        builder = builder_id or f"urn:efexport:local:{socket.gethostname() or 'unknown-host'}"
        invocation = uuid.uuid4().urn
    subjects = [ResourceDescriptor(name=name, digest={"sha256": digest})
                for name, digest in _subject_files(package_dir).items()]
    return Statement(
        subject=subjects,
        predicate=SlsaProvenance(
            buildDefinition=BuildDefinition(buildType=BUILD_TYPE, externalParameters=external,
                                            internalParameters=internal, resolvedDependencies=dependencies),
            runDetails=RunDetails(builder=Builder(id=builder, version={"efexport": versions.efexport}),
                                  metadata=BuildMetadata(invocationId=invocation, startedOn=started_on,
                                                         finishedOn=_now()))))


def write_provenance(package_dir: Path, *, checkpoint_url: str | None = None, builder_id: str | None = None,
                     started_on: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Write ``PACKAGE/provenance.intoto.json`` (atomically; an old one is replaced). Refuses a package whose
    files differ from its manifest (VerifyError) and a signed package (UsageError: the signature would no longer
    cover it; write provenance first, then sign)."""
    package_dir = Path(package_dir)
    if not (package_dir / MANIFEST_FILE).is_file():  # exit 3, as efexport sign
        raise SigningInputError(f"{package_dir}: not a package: no {MANIFEST_FILE}")
    if (package_dir / SIGNATURE_FILE).exists():
        raise UsageError(f"{package_dir} is signed already: provenance is written before signing (the signature "
                         f"covers it); remove {SIGNATURE_FILE}, write the provenance, then sign again")
    problems = package_file_problems(package_dir)
    if problems:
        raise VerifyError(f"{package_dir}: its files differ from its manifest: " + "; ".join(problems[:5]))
    statement = build_statement(package_dir, checkpoint_url=checkpoint_url, builder_id=builder_id,
                                started_on=started_on, env=env)
    target = package_dir / PROVENANCE_FILE
    try:
        write_atomically(target, statement.to_json())
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def read_statement(path: Path) -> Statement:
    """The statement in the file ``path``; ValueError (for the user) when it is not one."""
    if path.stat().st_size > MAX_PROVENANCE_BYTES:
        raise ValueError(f"{path.stat().st_size} bytes: not a provenance statement")
    try:
        return Statement.model_validate(json.loads(path.read_bytes()))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "/".join(str(p) for p in first["loc"])
        raise ValueError(f"not an in-toto Statement v1 with SLSA provenance v1: {where}: {first['msg']}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


def check_provenance(package_dir: Path) -> ProvenanceReport:
    """Read ``PACKAGE/provenance.intoto.json`` when present: its shape, its subjects against the files (each
    differing, missing or uncovered file named), and the builder and inputs it states."""
    package_dir = Path(package_dir)
    path = package_dir / PROVENANCE_FILE
    if not path.exists():
        return ProvenanceReport(present=False)
    try:
        statement = read_statement(path)
    except (ValueError, OSError) as exc:
        return ProvenanceReport(present=True, problems=(f"{PROVENANCE_FILE}: {exc}",))
    subjects = {s.name: s.digest.get("sha256") for s in statement.subject if s.name is not None}
    present = _subject_files(package_dir)
    problems = [f"{PROVENANCE_FILE}: subject {name}: sha256 differs from the file (modified?)"
                for name, digest in subjects.items() if name in present and present[name] != digest]
    problems += [f"{PROVENANCE_FILE}: subject {name}: no such file in the package" for name in subjects
                 if name not in present]
    problems += [f"{PROVENANCE_FILE}: {name} is not among its subjects" for name in present if name not in subjects]
    unnamed = len(statement.subject) - len(subjects)
    if unnamed:
        problems.append(f"{PROVENANCE_FILE}: {unnamed} subject(s) without a name")
    predicate = statement.predicate
    dependencies = [d.model_dump(mode="json", exclude_none=True) for d in
                    predicate.buildDefinition.resolvedDependencies]
    metadata = predicate.runDetails.metadata
    return ProvenanceReport(True, predicate.runDetails.builder.id, metadata.invocationId if metadata else None,
                            dict(predicate.buildDefinition.externalParameters), dependencies, len(subjects),
                            tuple(problems))


__all__ = ["BUILD_TYPE", "GITHUB_ISSUER", "PROVENANCE_FILE", "SLSA_PROVENANCE", "STATEMENT_TYPE", "ProvenanceReport",
           "Statement", "build_statement", "check_provenance", "read_statement", "write_provenance"]
