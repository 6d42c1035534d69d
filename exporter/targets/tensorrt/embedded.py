"""Where a TensorRT package carries efexport's facts: the prepared ONNX's ``metadata_props`` (all of them, as the
ONNX target writes them) and the ``engine.json`` sidecar (``prepare.TensorRTTarget.embed_metadata``: the model,
weights, preprocessing, interface and versions, the engine and its build, the parity of the prepared ONNX and of
the engine). Never the plan, which carries none (stock ``trtexec --loadEngine`` must still load it)."""

from __future__ import annotations

import json
from pathlib import Path

from efexport.exporter.manifest import EmbeddedEntries, entry_value
from efexport.exporter.targets.onnx.embedded import onnx_metadata

SIDECAR_FILE = "engine.json"
SIDECAR_SCHEMA = "efexport.tensorrt-engine/1"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError(f"{SIDECAR_FILE}: a key is given twice")
    return dict(pairs)


def sidecar_entries(path: Path) -> EmbeddedEntries:
    """engine.json's facts as the manifest's: its ``model`` section holds whole top-level facts, the rest parts of
    ``target``, ``parity`` and ``runtime_parity``."""
    sidecar = json.loads(path.read_text(), object_pairs_hook=_no_duplicates)
    if not isinstance(sidecar, dict) or sidecar.get("schema") != SIDECAR_SCHEMA:
        raise ValueError(f"{SIDECAR_FILE} is not an {SIDECAR_SCHEMA} document")
    model, parity = sidecar.get("model"), sidecar.get("parity")
    if not isinstance(model, dict) or not isinstance(parity, dict):
        raise ValueError(f"{SIDECAR_FILE}: no model or parity section")
    facts: dict[str, object] = {key: value for key, value in model.items()}
    facts |= {f"target.{key}": sidecar[key] for key in ("engine", "build_options", "trtexec") if key in sidecar}
    facts["parity"] = parity.get("prepared_onnx")
    if parity.get("engine") is not None:  # parity of the engine, where one was built and run
        facts["runtime_parity.tensorrt"] = parity["engine"]
    return EmbeddedEntries(SIDECAR_FILE, {f"efexport.{key}": entry_value(value) for key, value in facts.items()},
                           complete=False)


def embedded(package: Path, model_file: str) -> list[EmbeddedEntries]:
    model = package / model_file
    return [onnx_metadata(model, model_file), sidecar_entries(model.parent / SIDECAR_FILE)]
