"""manifest.json: everything known about an artifact, measured in the run that made it."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata as importlib_metadata
from pathlib import Path

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA = "efexport.manifest/3"
REFERENCE_FILE = "reference_io.npz"
_TRACKED_PACKAGES = ("torch", "numpy", "onnx", "onnxscript", "onnxruntime", "onnxsim", "onnxslim", "coremltools",
                     "tensorrt", "coreai-torch", "coreai-core", "coreai-opt")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed (model weights can be larger than memory allows twice over)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@cache
def _git_commit() -> str | None:
    """The commit efexport runs from, with ``-dirty`` when tracked files differ from it (as git describe says)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + "-dirty" if changed else head) or None


def tool_versions() -> dict[str, str | None]:
    from efexport.exporter import __version__

    versions: dict[str, str | None] = {"efexport": __version__, "efexport_git_commit": _git_commit(),
                                       "python": platform.python_version()}
    for package in _TRACKED_PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def file_table(directory: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``directory`` except the manifest itself, sorted by path."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return {p.relative_to(directory).as_posix(): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
            for p in files}


def entry_value(value: object) -> str:
    """One fact as a metadata entry's value: a string as it is, anything else as JSON with sorted keys."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def metadata_entries(manifest: dict) -> dict[str, str]:
    """The manifest's facts as flat string pairs for a model file's own metadata (file hashes excluded:
    they would have to include the file that carries them)."""
    return {f"efexport.{key}": entry_value(value) for key, value in manifest.items() if key != "files"}


# Measured timings differ on every run: kept out of the model file, so the same inputs give the same model bytes.
VOLATILE_ENTRIES = ("efexport.latency", "efexport.latency_note")


def model_file_entries(entries: dict[str, str]) -> dict[str, str]:
    """The metadata entries that go inside a model file: all but the volatile ones (the manifest has those)."""
    return {key: value for key, value in entries.items() if key not in VOLATILE_ENTRIES}


@dataclass(frozen=True)
class EmbeddedEntries:
    """efexport's facts as one place in a package carries them, read back (each target's ``embedded``): what the
    target's ``embed_metadata`` wrote there, as string pairs. A key is ``efexport.<fact>`` (a top-level fact of
    the manifest, its value ``entry_value``) or ``efexport.<fact>.<key>...`` (a part of one, e.g. TensorRT's
    ``engine.json`` holds ``efexport.target.engine``); other keys (class labels, a converter's own) are ignored."""

    where: str  # for people: "model.onnx (metadata_props)"
    entries: dict[str, str]
    complete: bool = True  # holds every fact ``model_file_entries`` puts in a model file (else: checked on what
    #                        it holds)


def unique_entries(pairs: list[tuple[str, str]], where: str) -> dict[str, str]:
    """String pairs as a dict; ValueError when a key is given twice (readers of the file could take either)."""
    entries: dict[str, str] = {}
    for key, value in pairs:
        if key in entries:
            raise ValueError(f"{where}: the key {key!r} is given twice")
        entries[key] = value
    return entries


def model_description(entries: dict[str, str]) -> str:
    """One line for a model file's own description field, from its metadata entries (``metadata_entries``)."""
    recipe = json.loads(entries["efexport.recipe"])["values"]
    model = json.loads(entries["efexport.model"])
    weights = json.loads(entries["efexport.weights"])
    source = "random-init weights, not for deployment" if weights.get("source") != "checkpoint" else "checkpoint"
    return (f"{model['family']}-{model['variant']} ImageNet-1k classifier ({recipe['precision']}, {source}); "
            f"exported and verified by efexport")


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # Python's json reads NaN and Infinity; a manifest never holds them


def read_manifest(directory: Path) -> dict:
    from efexport.exporter.errors import VerifyError

    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(), parse_constant=_not_json)
    except FileNotFoundError:
        raise VerifyError(f"{directory}: no {MANIFEST_FILE}; not an efexport artifact") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, or a number too long for int()
        raise VerifyError(f"{path}: unreadable manifest: {exc}") from None
    except RecursionError:
        raise VerifyError(f"{path}: unreadable manifest: nested too deeply") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise VerifyError(f"{path}: not an {MANIFEST_SCHEMA} manifest")
    return manifest
