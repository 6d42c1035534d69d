"""Re-checking a saved artifact anywhere: file hashes against its manifest, then parity from reference_io.npz."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from exporter.errors import VerifyError
from exporter.manifest import MANIFEST_FILE, REFERENCE_FILE, file_table, read_manifest
from exporter.recipes import Tolerances
from exporter.targets import TARGETS, Runner
from validate.parity import ParityReport, compare_outputs
from validate.reference import ReferenceSet


@dataclass(frozen=True)
class VerifyReport:
    path: str
    passed: bool
    problems: tuple[str, ...]
    files_checked: int
    parity: ParityReport | None

    def to_dict(self) -> dict:
        return asdict(self)


def _file_problems(directory: Path, recorded: dict) -> list[str]:
    present = file_table(directory)
    problems = [f"missing file {name}" for name in recorded if name not in present]
    problems += [f"unexpected file {name} (not in the manifest)" for name in present if name not in recorded]
    problems += [f"{name}: sha256 differs from the manifest (modified?)" for name, entry in recorded.items()
                 if name in present and present[name]["sha256"] != entry.get("sha256")]
    return problems


def _runner_for(directory: Path, manifest: dict, threads: int) -> Runner:
    fmt = manifest.get("target", {}).get("format")
    if fmt not in TARGETS:
        raise VerifyError(f"{directory}: no runtime on this machine for target format {fmt!r}")
    return TARGETS[fmt].open_runner(directory / manifest["target"]["model_file"], threads)


def verify_artifact(directory: Path, threads: int = 2) -> VerifyReport:
    """Raise VerifyError when the directory is not an artifact at all; otherwise report what fails."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VerifyError(f"{directory}: not a directory")
    manifest = read_manifest(directory)
    problems = _file_problems(directory, manifest.get("files", {}))
    parity = None
    model_file = manifest.get("target", {}).get("model_file", "")
    # Parity runs even when a hash differs: a changed model must also be caught by what it computes.
    if model_file and (directory / model_file).exists() and (directory / REFERENCE_FILE).is_file():
        try:
            reference = ReferenceSet.load(directory / REFERENCE_FILE)
            tolerances = Tolerances.model_validate(manifest["parity"]["tolerances"])
            runner = _runner_for(directory, manifest, threads)
            parity = compare_outputs(runner(reference.inputs), reference.outputs, reference.kinds, tolerances)
            problems += [f"parity: {failure}" for failure in parity.failures]
        except VerifyError:
            raise
        except Exception as exc:  # a damaged model or reference file: a failed verification, not a crash
            problems.append(f"parity: could not run the model on the reference inputs: {type(exc).__name__}: {exc}")
    return VerifyReport(str(directory), not problems, tuple(problems), len(manifest.get("files", {})) + 1, parity)


__all__ = ["MANIFEST_FILE", "VerifyReport", "verify_artifact"]
