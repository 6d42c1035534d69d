"""Where a Core AI package's asset carries efexport's facts: the creator-defined entries of its ``metadata.json``
(``convert.set_metadata``), read as JSON without coreai-core."""

from __future__ import annotations

import json
from pathlib import Path

from efexport.exporter.manifest import EmbeddedEntries
from efexport.validate.coreai_runtime import METADATA_FILE

CUSTOM = "creatorDefinedMetadata"  # coreai-core's key for the creator-defined entries


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError(f"{METADATA_FILE}: a key is given twice")
    return dict(pairs)


def embedded(package: Path, model_file: str) -> list[EmbeddedEntries]:
    where = f"{model_file}/{METADATA_FILE} ({CUSTOM})"
    metadata = json.loads((package / model_file / METADATA_FILE).read_text(), object_pairs_hook=_no_duplicates)
    custom = metadata.get(CUSTOM) if isinstance(metadata, dict) else None
    if not isinstance(custom, dict):
        raise ValueError(f"{where}: not an object")
    entries = {key: value for key, value in custom.items() if key.startswith("efexport.")}
    for key, value in entries.items():
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} is not a string")
    return [EmbeddedEntries(where, entries)]
