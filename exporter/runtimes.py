"""What the pipeline and ``verify`` both do with a runtime: pick the inputs it takes, check its parity, time it;
and tell whether two model files make a runtime compute the same (``model_digest``)."""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path

import numpy as np

from efexport.exporter.protowire import ONNX_METADATA_PROPS, fields
from efexport.exporter.recipes import Recipe
from efexport.exporter.targets.base import Runner
from efexport.validate.coreai_runtime import METADATA_FILE
from efexport.validate.latency import LatencyReport, host_fingerprint, measure
from efexport.validate.parity import ParityReport, compare_outputs
from efexport.validate.reference import ReferenceSet


def accepted_inputs(runner: Runner, reference: ReferenceSet) -> list[int]:
    """Indices of the reference inputs a runner can take (a Core ML image input cannot take noise tensors)."""
    kinds = getattr(runner, "input_kinds", None)
    return [i for i, kind in enumerate(reference.kinds) if kinds is None or kind in kinds]


def runtime_parity(runner: Runner, reference: ReferenceSet, recipe: Recipe) -> ParityReport | None:
    """The runner's outputs against the reference at its precision's tolerances; None if it takes no input."""
    keep = accepted_inputs(runner, reference)
    if not keep:
        return None
    tolerances = recipe.tolerances(getattr(runner, "precision", None))
    return compare_outputs(runner(reference.inputs[keep]), reference.outputs[keep],
                           tuple(reference.kinds[i] for i in keep), tolerances)


def timed_runtimes(runner: Runner, others: list[Runner]) -> list[Runner]:
    """What latency is measured on: the deployment runtimes (a reference execution, e.g. the Core ML interpreter
    or ONNX Runtime on TensorRT's prepared graph, says nothing about deployed speed)."""
    return ([runner] if getattr(runner, "is_deployment_runtime", True) else []) + others


def _host_latency(runner: Runner, recipe: Recipe, inputs: np.ndarray) -> LatencyReport:
    settings = recipe.latency
    batch = settings.batch_size if runner.static_batch is None else runner.static_batch
    batch_inputs = inputs[:1].repeat(batch, axis=0)
    measurement = measure(lambda: runner(batch_inputs), settings.rule())
    return LatencyReport.from_measurement(
        measurement, backend=runner.backend, runtime_version=runner.runtime_version, precision=recipe.precision,
        batch_size=batch, threads=runner.threads, device=host_fingerprint(),
        compute_units=getattr(runner, "compute_units", None))


def measure_latency(runner: Runner, recipe: Recipe, reference: ReferenceSet) -> list[LatencyReport]:
    """The runner's own latency reports (e.g. per profile batch, on a GPU), or host end-to-end timing."""
    if hasattr(runner, "latency_reports"):
        return runner.latency_reports(recipe)
    return [_host_latency(runner, recipe, reference.inputs[accepted_inputs(runner, reference)])]


# ``model_digest``: an ONNX file is one protobuf ModelProto. Its metadata_props (field 14) are string pairs that
# ONNX Runtime reports back (InferenceSession.get_modelmeta); every other field (the graph and its weights,
# opsets, IR version, functions) is what it computes from. The package stage rewrites the model file only to
# replace the metadata (onnxsim's record of what it simplified by efexport's facts), so the packaged file and the
# file the validate stage ran have the same digest exactly when everything but that metadata is byte for byte
# the same. Only metadata known to be inert is passed over: ONNX Runtime can take session options from a
# metadata entry (``ort_config``), so a file with any other key has no digest, and is run.
_INERT_KEY_PREFIXES = (b"efexport.", b"onnxsim.")  # efexport's facts (metadata_entries); onnxsim's own record
# A tensor stored outside the file (external data) names its file in an entry with the key "location"
# (StringStringEntryProto: field 1, length 8): a file without these bytes holds all its weights itself.
_EXTERNAL_DATA_KEY = b"\x0a\x08location"


def model_digest(path: Path) -> str | None:
    """sha256 of what a runtime computes from a model file: an ONNX file's ModelProto without its metadata_props,
    or a Core AI asset without its metadata (``_asset_digest``).

    For ONNX: every top-level field of its ModelProto except its metadata_props, read straight from the file's
    bytes (no parse, no copy). None when that cannot be said: not an .onnx file or .aimodel folder, weights in
    external data, a metadata key that is neither efexport's nor onnxsim's (ONNX Runtime can read session
    options from metadata), or bytes that are not a well-formed protobuf message."""
    path = Path(path)
    if path.suffix == ".aimodel" and path.is_dir():
        return _asset_digest(path)
    if path.suffix != ".onnx" or not path.is_file():
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(_EXTERNAL_DATA_KEY) != -1:
                return None
            with memoryview(data) as view:
                for number, start, payload, end in fields(data, 0, len(data)):
                    if number != ONNX_METADATA_PROPS:
                        digest.update(view[start:end])
                        continue
                    keys = [data[p:e] for n, _, p, e in fields(data, payload, end) if n == 1]
                    if len(keys) != 1 or not keys[0].startswith(_INERT_KEY_PREFIXES):
                        return None
    except (OSError, ValueError):  # ValueError: malformed, or an empty file (mmap cannot map 0 bytes)
        return None
    return digest.hexdigest()


def _asset_digest(folder: Path) -> str | None:
    """sha256 over a Core AI asset's files but its metadata, which the runtime does not compute from (their
    names and bytes, in name order); None when the folder holds a link or anything but plain files and folders."""
    digest = hashlib.sha256()
    for item in sorted(folder.rglob("*")):
        if item.is_symlink() or not (item.is_file() or item.is_dir()):
            return None
        name = item.relative_to(folder).as_posix()
        if item.is_file() and name != METADATA_FILE:  # what the package stage rewrites (efexport's facts)
            digest.update(name.encode() + b"\0" + hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()
