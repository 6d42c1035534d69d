"""Provenance statements (exporter/provenance.py, efexport provenance): an in-toto Statement v1 with SLSA
provenance v1, its subjects checked by verify, covered by the signature made after it. The session's l1 ONNX
package is copied before anything is written into it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from efexport.exporter.errors import ExitCode, UsageError
from efexport.exporter.manifest import sha256_of
from efexport.exporter.provenance import (
    BUILD_TYPE,
    PROVENANCE_FILE,
    SLSA_PROVENANCE,
    STATEMENT_TYPE,
    build_statement,
    check_provenance,
    write_provenance,
)
from efexport.exporter.signing import SIGNATURE_FILE, SigningInputError, Trust, check_signature, sign_package
from efexport.exporter.verify import verify_package
from tests.helpers import run_cli
from tests.packages import exported_package

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

GITHUB = {"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/efexport",
          "GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_SHA": "c" * 40, "GITHUB_REF": "refs/tags/v1.2.0",
          "GITHUB_WORKFLOW_REF": "acme/efexport/.github/workflows/publish.yml@refs/tags/v1.2.0",
          "GITHUB_EVENT_NAME": "push", "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64", "RUNNER_NAME": "runner-7"}


@pytest.fixture
def package(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    source = exported_package("onnx", tmp_path_factory)[0]
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    return copy


def _with_checkpoint_weights(package: Path) -> str:
    """The copy's manifest made to name a checkpoint (the file table does not list manifest.json)."""
    digest = "ab" * 32
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["weights"] = {"source": "checkpoint", "file": "efficientformer_l1.pth", "sha256": digest,
                           "format": "pth", "layout": "upstream"}
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return digest


def test_the_command_writes_a_statement_whose_subjects_are_the_files(package: Path) -> None:
    result = run_cli("provenance", package, "--builder-id", "https://ci.example.com/builders/7",
                     "--started-on", "2026-01-31T12:00:00Z", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["builder"] == "https://ci.example.com/builders/7"
    statement = json.loads((package / PROVENANCE_FILE).read_text())
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == SLSA_PROVENANCE
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {p.name: sha256_of(p) for p in package.iterdir() if p.name != PROVENANCE_FILE}
    assert "manifest.json" in subjects
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    manifest = json.loads((package / "manifest.json").read_text())
    external = definition["externalParameters"]
    assert (external["variant"], external["target"], external["precision"]) == ("l1", "onnx", "fp32")
    assert external["recipe"] == {"file": manifest["recipe"]["file"], "sha256": manifest["recipe"]["file_sha256"]}
    assert external["weights"] == {"source": "random-init", "seed": 0}
    efexport = next(d for d in definition["resolvedDependencies"] if d["name"] == "efexport")
    assert efexport["annotations"]["version"] == manifest["versions"]["efexport"]
    metadata = statement["predicate"]["runDetails"]["metadata"]
    assert metadata["startedOn"] == "2026-01-31T12:00:00Z" and metadata["finishedOn"].endswith("Z")
    assert metadata["invocationId"].startswith("urn:uuid:")
    report = check_provenance(package)
    assert report.present and not report.problems and report.subjects == len(subjects)


def test_github_actions_builder_checkpoint_and_commit(package: Path) -> None:
    digest = _with_checkpoint_weights(package)
    url = "https://example.com/weights/efficientformer_l1.pth"
    statement = build_statement(package, checkpoint_url=url, builder_id="ignored in CI", env=GITHUB)
    predicate = statement.predicate
    run = "https://github.com/acme/efexport/actions/runs/4242"
    assert predicate.runDetails.builder.id == run
    assert predicate.runDetails.metadata.invocationId == f"{run}/attempts/2"
    external = predicate.buildDefinition.externalParameters
    assert external["weights"] == {"source": "checkpoint", "file": "efficientformer_l1.pth", "sha256": digest,
                                   "url": url}
    checkpoint, efexport = predicate.buildDefinition.resolvedDependencies
    assert (checkpoint.uri, checkpoint.digest) == (url, {"sha256": digest})
    assert efexport.uri == "git+https://github.com/acme/efexport@refs/tags/v1.2.0"
    assert efexport.digest["gitCommit"]  # the manifest's commit (this checkout), else GITHUB_SHA
    internal = predicate.buildDefinition.internalParameters
    assert internal["runner"] == {"os": "Linux", "arch": "X64", "name": "runner-7"}
    assert internal["github"]["workflow_ref"] == GITHUB["GITHUB_WORKFLOW_REF"]


def test_checkpoint_url_is_refused_for_random_weights_and_a_directory_that_is_not_a_package(package: Path,
                                                                                           tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="random-init weights"):
        write_provenance(package, checkpoint_url="https://example.com/x.pth")
    assert not (package / PROVENANCE_FILE).exists()
    with pytest.raises(SigningInputError, match=r"not a package: no manifest\.json") as refused:
        write_provenance(tmp_path / "nothing")
    assert refused.value.exit_code == ExitCode.BAD_INPUT


def test_a_tampered_subject_fails_naming_the_file(package: Path) -> None:
    write_provenance(package)
    statement = json.loads((package / PROVENANCE_FILE).read_text())
    for subject in statement["subject"]:
        if subject["name"] == "model.onnx":
            subject["digest"]["sha256"] = "0" * 64
    (package / PROVENANCE_FILE).write_text(json.dumps(statement))
    report = verify_package(package)
    assert not report.passed
    assert report.problems == (f"{PROVENANCE_FILE}: subject model.onnx: sha256 differs from the file (modified?)",)
    assert report.provenance["builder"].startswith("urn:efexport:local:")


def test_a_broken_statement_is_a_problem_not_a_crash(package: Path) -> None:
    (package / PROVENANCE_FILE).write_text(json.dumps({"_type": STATEMENT_TYPE, "subject": []}))
    report = check_provenance(package)
    assert report.present and len(report.problems) == 1 and report.problems[0].startswith(f"{PROVENANCE_FILE}: not")


def test_written_before_signing_and_covered_by_the_signature(package: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    write_provenance(package)
    assert sign_package(package, key=private).covered == len(list(package.iterdir())) - 1
    reference = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(package), "--signature",
                                str(package / SIGNATURE_FILE), "--public_key", str(public)],
                               capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr  # the statement is signed: nothing else needs ignoring
    result = run_cli("provenance", package)  # after signing: refused, the signature would not cover it
    assert result.returncode == ExitCode.USAGE and "signed already" in result.stderr
    statement = json.loads((package / PROVENANCE_FILE).read_text())
    statement["predicate"]["runDetails"]["builder"]["id"] = "https://attacker.example.com"
    (package / PROVENANCE_FILE).write_text(json.dumps(statement, indent=2) + "\n")
    report = check_signature(package, Trust(trusted_keys=(public,)))
    assert report.problems == (f"{PROVENANCE_FILE}: changed since it was signed (sha256 differs from "
                               f"{SIGNATURE_FILE})",)
