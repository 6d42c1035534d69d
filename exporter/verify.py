"""Re-checking a package anywhere: a package directory or its bundle.

In order: the bundle's members are safe and its ``.sha256`` sidecar matches (bundles only); the manifest
follows its JSON Schema; every file's sha256 matches the manifest (the signature ``model.sig`` and the provenance
statement ``provenance.intoto.json`` are made after the manifest: allowed under these exact names); the signature,
when there is one (``exporter/signing.py``: who signed, every file against it, and with trust material the
signature itself; ``trust.require_signature`` or trust material make an unsigned package fail); the provenance
statement, when there is one (``exporter/provenance.py``: its subjects against the files); the model reproduces
``reference_io.npz`` within the recorded tolerances on the package's own runtime (ONNX Runtime, the Core ML
reference interpreter, ONNX Runtime on TensorRT's prepared graph); and on every other runtime of the target
present on this machine (Core ML on macOS, the TensorRT engine where TensorRT and a GPU exist). With
``latency`` each deployment runtime present is also timed, in the manifests' latency schema. The manifest is
read as the typed ``Manifest``; one that breaks its schema is reported (every problem, and every file whose
hash differs from what it lists), but nothing is run from it: its target, recipe and tolerances are untrusted.

The export's package stage verifies its own result with what its validate stage already computed
(``ValidatedRun``): the parity runner's outputs are taken as the package's when the model file computes what
the validated one did (the same ``model_digest``: only efexport's metadata differs) on the same inputs (those
in ``reference_io.npz``, compared array for array). Everything else is checked as for any package, and the
outputs are still compared with ``reference_io.npz`` at the manifest's tolerances; a model file that differs
in anything a runtime computes from is run again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from efexport.exporter.bundle import checksum_problems, is_bundle, opened_bundle
from efexport.exporter.embedded_facts import embedded_fact_problems
from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, REFERENCE_FILE, file_table, read_manifest
from efexport.exporter.manifest_model import Manifest
from efexport.exporter.manifest_schema import typed_or_problems
from efexport.exporter.provenance import check_provenance
from efexport.exporter.recipes import Recipe, Tolerances
from efexport.exporter.runtimes import measure_latency, model_digest, runtime_parity, timed_runtimes
from efexport.exporter.signing import UNLISTED_FILES, SignatureReport, Trust, check_signature
from efexport.exporter.targets import TARGETS
from efexport.validate.isolated import outputs_isolated
from efexport.validate.parity import ParityReport, compare_outputs
from efexport.validate.reference import ReferenceSet


@dataclass(frozen=True)
class VerifyReport:
    path: str
    passed: bool
    problems: tuple[str, ...]
    files_checked: int
    parity: ParityReport | None
    package: dict = field(default_factory=dict)  # the manifest's package block: name, deployable, why not
    runtime_parity: dict[str, dict] = field(default_factory=dict)  # other runtimes present here
    not_checked_here: dict[str, str] = field(default_factory=dict)  # runtimes absent here, and why
    latency: list[dict] = field(default_factory=list)  # with latency=True
    signature: dict = field(default_factory=lambda: SignatureReport(present=False).to_dict())  # signing.SignatureReport
    provenance: dict | None = None  # provenance.ProvenanceReport when the package has a statement

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ValidatedRun:
    """The parity run of an export's validate stage: the model it ran (``model_digest`` of the file), the inputs
    and their kinds, and the runner's outputs."""

    model_digest: str
    inputs: np.ndarray
    kinds: tuple[str, ...]
    outputs: np.ndarray

    def outputs_for(self, model_path: Path, reference: ReferenceSet) -> np.ndarray | None:
        """The validated outputs, if running ``model_path`` on ``reference``'s inputs computes them: the same
        inputs and kinds, and a model file with the same digest; else None (run it)."""
        if reference.kinds != self.kinds or not np.array_equal(reference.inputs, self.inputs):
            return None
        return self.outputs if model_digest(model_path) == self.model_digest else None


def _recorded_digests(manifest: Manifest | None, raw: object) -> dict[str, object]:
    """The manifest's file table as {path: sha256}: from the typed manifest, or, when the manifest breaks its
    schema, whatever its ``files`` holds (a bad entry's digest is None; the schema problems name it), so that a
    tampered package still has its files checked."""
    if manifest is not None:
        return {name: entry.sha256 for name, entry in manifest.files.items()}
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, dict):
        return {}
    return {name: entry.get("sha256") if isinstance(entry, dict) else None for name, entry in files.items()}


def _file_problems(directory: Path, recorded: dict[str, object]) -> list[str]:
    present = {name: entry for name, entry in file_table(directory).items()
               if name not in UNLISTED_FILES or name in recorded}  # made after the manifest: never listed
    problems = [f"missing file {name}" for name in recorded if name not in present]
    problems += [f"unexpected file {name} (not in the manifest)" for name in present if name not in recorded]
    problems += [f"{name}: sha256 differs from the manifest (modified?)" for name, digest in recorded.items()
                 if name in present and present[name]["sha256"] != digest]
    return problems


def _model_file_problem(model_file: object, recorded: dict[str, object]) -> str | None:
    """Why ``target.model_file`` cannot be run, or None: it must name a file (or, for Core ML, a folder) of this
    package that its file table lists. A tampered manifest must not make verify open a path elsewhere."""
    if not isinstance(model_file, str) or not model_file:
        return f"manifest: target/model_file: {model_file!r} does not name the model file"
    parts = PurePosixPath(model_file).parts
    if model_file.startswith("/") or "\\" in model_file or ".." in parts or not parts:
        return f"manifest: target/model_file: {model_file!r} is not a path inside the package"
    if not any(name == model_file or name.startswith(model_file.rstrip("/") + "/") for name in recorded):
        return f"manifest: target/model_file: {model_file!r} is not in the manifest's file table"
    return None


def other_runtimes_present(target, model_path: Path, recipe: Recipe) -> tuple[list, dict[str, str]]:
    """The target's runtimes besides the parity runner that exist here; for those that do not, the reason."""
    try:
        runners = target.extra_runtimes(model_path, recipe)
    except ImportError as exc:  # e.g. a model.plan on a machine without TensorRT
        return [], {target.name: f"runtime not installed here: {exc}"}
    if not runners and target.latency_unavailable:
        specific = getattr(target, "runtime_unavailable_reason", None)  # e.g. TensorRT: no GPU or no tensorrt
        return [], {target.name: (specific and specific()) or target.latency_unavailable}
    return runners, {}


def _check_runtimes(directory: Path, manifest: Manifest, threads: int, latency: bool,
                    validated: ValidatedRun | None = None) -> tuple[list[str], dict]:
    """Parity on every runtime present here (and latency if asked); problems and the report's fields."""
    fmt = manifest.target.format
    target = TARGETS[fmt].load()  # the schema allows only registered formats
    model_path = directory / manifest.target.model_file
    reference = ReferenceSet.load(directory / REFERENCE_FILE)
    recipe = Recipe.model_validate(manifest.recipe.values.as_json())
    tolerances = Tolerances.model_validate(manifest.parity.tolerances.as_json())
    outputs = validated.outputs_for(model_path, reference) if validated else None
    if outputs is None:  # a stranger's model that crashes the runtime kills a child
        outputs = outputs_isolated(lambda inputs: target.open_runner(model_path, threads)(inputs),
                                   reference.inputs, f"{fmt} parity run")
    parity = compare_outputs(outputs, reference.outputs, reference.kinds, tolerances)
    problems = [f"parity: {failure}" for failure in parity.failures]
    others, not_checked = other_runtimes_present(target, model_path, recipe)
    fields: dict = {"parity": parity, "runtime_parity": {}, "not_checked_here": not_checked, "latency": []}
    for other in others:
        report = runtime_parity(other, reference, recipe)
        if report is None:
            problems.append(f"{other.backend}: takes none of the reference inputs")
            continue
        fields["runtime_parity"][other.backend] = report.to_dict()
        problems += [f"parity on {other.backend}: {failure}" for failure in report.failures]
    if latency:
        runner = target.open_runner(model_path, threads)  # only to time it: parity ran in the child
        fields["latency"] = [r.to_dict() for t in timed_runtimes(runner, others)
                             for r in measure_latency(t, recipe, reference)]
    return problems, fields


def verify_artifact(directory: Path, threads: int = 2, latency: bool = False,
                    validated: ValidatedRun | None = None, trust: Trust | None = None) -> VerifyReport:
    """Raise VerifyError when the directory is not a package at all; otherwise report everything that fails.
    ``validated``: the export's own parity run, reused where it is the run verify would make (package stage).
    ``trust``: who must have signed it (default: nobody; a signature present is still read and its files
    checked)."""
    directory = Path(directory)
    if not directory.exists():
        raise VerifyError(f"{directory}: no such package directory or bundle")
    if not directory.is_dir():
        raise VerifyError(f"{directory}: not a package directory or a bundle (.zip)")
    raw = read_manifest(directory)
    manifest, manifest_problems = typed_or_problems(raw)
    problems = [f"manifest: {p}" for p in manifest_problems]
    recorded = _recorded_digests(manifest, raw)
    problems += _file_problems(directory, recorded)
    signature = check_signature(directory, trust or Trust())
    problems += list(signature.problems)
    provenance = check_provenance(directory)
    problems += list(provenance.problems)
    fields: dict = {"parity": None}
    model_problem = _model_file_problem(manifest.target.model_file, recorded) if manifest else None
    problems += [model_problem] if model_problem else []
    problems += embedded_fact_problems(directory, manifest) if manifest is not None and not model_problem else []
    if REFERENCE_FILE not in recorded and not (directory / REFERENCE_FILE).is_file():  # listed: reported as missing
        problems.append(f"missing {REFERENCE_FILE}: parity cannot be checked")
    if manifest is None:  # its target, tolerances and recipe are what parity needs: none of them can be trusted
        problems.append("parity: not checked: the manifest does not follow its schema (above)")
    # Parity runs even when a hash differs: a changed model must also be caught by what it computes.
    elif not model_problem and (directory / manifest.target.model_file).exists() \
            and (directory / REFERENCE_FILE).is_file():
        try:
            runtime_problems, fields = _check_runtimes(directory, manifest, threads, latency, validated)
            problems += runtime_problems
        except VerifyError:
            raise
        except Exception as exc:  # a damaged model, reference or manifest: a failed verification, not a crash
            problems.append(f"parity: could not run the model on the reference inputs: {type(exc).__name__}: {exc}")
    if fields["parity"] is None and not problems:  # never a pass without parity
        problems.append("parity was not checked")
    if manifest is not None:
        package = manifest.package.as_json()
    else:  # what a manifest that breaks its schema says of the package (a bundle's folder is checked against it)
        package = raw.get("package") if isinstance(raw.get("package"), dict) else {}
    return VerifyReport(str(directory), not problems, tuple(problems), len(recorded) + 1, package=package,
                        signature=signature.to_dict(),
                        provenance=provenance.to_dict() if provenance.present else None, **fields)


def verify_package(path: Path, threads: int = 2, latency: bool = False, trust: Trust | None = None) -> VerifyReport:
    """Verify a package directory or a bundle (.zip, extracted privately after its members are checked), with
    ``trust`` saying who must have signed it (``signing.Trust``; checked first: UsageError for unusable trust
    files)."""
    path = Path(path)
    if trust is not None:
        trust.check()
    if not is_bundle(path):
        return verify_artifact(path, threads, latency, trust=trust)
    sidecar = checksum_problems(path) if path.is_file() else []
    with opened_bundle(path) as directory:
        report = verify_artifact(directory, threads, latency, trust=trust)
        name = report.package.get("name")
        if name and directory.name != name:
            sidecar.append(f"bundle folder {directory.name!r} does not match the package name {name!r}")
    problems = (*sidecar, *report.problems)
    return replace(report, path=str(path), passed=not problems, problems=problems)


__all__ = ["MANIFEST_FILE", "Trust", "ValidatedRun", "VerifyReport", "verify_artifact", "verify_package"]
