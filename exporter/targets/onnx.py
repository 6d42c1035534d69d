"""The ONNX target: TorchScript-based export at a chosen opset, simplification, and ONNX Runtime sessions."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from efexport.exporter.manifest import model_file_entries
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.targets.base import ExportedModel
from efexport.exporter.targets.onnx_cleanup import constants_to_initializers

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    simplifier: str
    op_counts: dict[str, int]


def _simplify(model: onnx.ModelProto, simplifier: str) -> onnx.ModelProto:
    if simplifier == "onnxsim":
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model against the original")
        return simplified
    if simplifier == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def export_onnx(captured: CapturedGraph, path: Path, opset: int, simplifier: str) -> OnnxExport:
    (image,), (logits,) = captured.inputs, captured.outputs
    dynamic = {image.name: {0: "batch"}, logits.name: {0: "batch"}} if isinstance(image.shape[0], str) else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(captured.module, (captured.example,), buffer, input_names=[image.name],
                          output_names=[logits.name], opset_version=opset, dynamic_axes=dynamic,
                          do_constant_folding=True, dynamo=False)
    model = _simplify(onnx.load_from_string(buffer.getvalue()), simplifier)
    constants_to_initializers(model)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return OnnxExport(path, opset, simplifier, op_counts(model))


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the model's metadata_props with ``metadata`` (keys sorted, so the file is reproducible)."""
    model = onnx.load(path)
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]
    onnx.save(model, path)


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


class OnnxRunner:
    """An ONNX Runtime CPU session that runs a stack of inputs, one batch-1 call each for static exports."""

    backend = "onnxruntime-cpu"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.threads = threads
        self.runtime_version = ort.__version__
        (node,) = self.session.get_inputs()
        self.input_name = node.name
        self.static_batch = node.shape[0] if isinstance(node.shape[0], int) else None

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        step = self.static_batch or len(inputs)
        outputs = [self.session.run(None, {self.input_name: inputs[i:i + step]})[0]
                   for i in range(0, len(inputs), step)]
        return np.concatenate(outputs)


class OnnxTarget:
    """ONNX: opset and simplifier from the recipe, metadata_props, ONNX Runtime CPU for parity and latency."""

    name = "onnx"
    model_file = MODEL_FILE

    def describe(self, recipe: Recipe) -> str:
        return f"ONNX opset {recipe.export.opset}, {recipe.export.simplifier}"

    def preflight(self, recipe: Recipe, num_classes: int) -> None:
        pass  # everything ONNX needs is in the recipe, already validated

    def export(self, captured: CapturedGraph, staging: Path, recipe: Recipe) -> ExportedModel:
        exported = export_onnx(captured, staging / MODEL_FILE, recipe.export.opset, recipe.export.simplifier)
        return ExportedModel(exported.path, {
            "format": "onnx", "model_file": MODEL_FILE, "precision": recipe.precision, "opset": exported.opset,
            "simplifier": exported.simplifier, "dynamic_batch": recipe.export.dynamic_batch,
            "op_counts": exported.op_counts,
        })

    latency_unavailable = ""  # ONNX Runtime runs here: always timed

    def open_runner(self, path: Path, threads: int) -> OnnxRunner:
        return OnnxRunner(path, threads)

    def extra_runtimes(self, path: Path, recipe: Recipe) -> list:
        return []  # the parity runner is ONNX Runtime itself

    def embed_metadata(self, path: Path, entries: dict[str, str]) -> None:
        set_metadata(path, model_file_entries(entries))
