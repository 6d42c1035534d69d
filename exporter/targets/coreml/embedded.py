"""Where a Core ML package's model carries efexport's facts: the user-defined metadata of the model spec
(``convert.set_metadata``), read from the spec file's bytes (``exporter.protowire``) without coremltools and
without macOS. The spec file is the one the package's ``Manifest.json`` names as its root model, as Core ML and
coremltools find it."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from efexport.exporter.manifest import EmbeddedEntries, unique_entries
from efexport.exporter.protowire import string_pairs

# Model.description (2) -> ModelDescription.metadata (100) -> Metadata.userDefined (100, map<string, string>)
USER_DEFINED = (2, 100, 100)


def root_spec(package: Path) -> Path:
    """The model spec file the .mlpackage's Manifest.json names as its root model (under ``Data/``); ValueError
    when the manifest does not name one inside the package."""
    manifest = json.loads((package / "Manifest.json").read_text())
    try:
        relative = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{package.name}/Manifest.json names no root model ({type(exc).__name__}: {exc})") from None
    parts = PurePosixPath(relative).parts if isinstance(relative, str) else ()
    if not parts or relative.startswith("/") or "\\" in relative or ".." in parts:
        raise ValueError(f"{package.name}/Manifest.json: root model path {relative!r} is not inside the package")
    spec = package.joinpath("Data", *parts)
    if any(p.is_symlink() for p in (spec, *spec.parents) if p.is_relative_to(package)):
        raise ValueError(f"{package.name}: the root model {relative!r} is reached through a link")
    return spec


def embedded(package: Path, model_file: str) -> list[EmbeddedEntries]:
    spec = root_spec(package / model_file)
    name = f"{model_file}/{spec.relative_to(package / model_file).as_posix()}"
    where = f"{name} (user-defined metadata)"
    return [EmbeddedEntries(where, unique_entries(string_pairs(spec.read_bytes(), USER_DEFINED), where))]
