"""Where an ONNX package's model carries efexport's facts: the ModelProto's ``metadata_props``
(``export.set_metadata``), read from the file's bytes without loading the model (``exporter.protowire``)."""

from __future__ import annotations

import mmap
from pathlib import Path

from efexport.exporter.manifest import EmbeddedEntries, unique_entries
from efexport.exporter.protowire import ONNX_METADATA_PROPS, string_pairs


def onnx_metadata(path: Path, name: str) -> EmbeddedEntries:
    """The metadata_props of the ONNX file at ``path`` (``name``: its path in the package); ValueError when the
    file is not a well-formed protobuf message or a key is given twice, OSError when it cannot be read."""
    where = f"{name} (metadata_props)"
    with path.open("rb") as handle:
        if not handle.seek(0, 2):
            raise ValueError(f"{name} is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return EmbeddedEntries(where, unique_entries(string_pairs(data, (ONNX_METADATA_PROPS,)), where))


def embedded(package: Path, model_file: str) -> list[EmbeddedEntries]:
    return [onnx_metadata(package / model_file, model_file)]
