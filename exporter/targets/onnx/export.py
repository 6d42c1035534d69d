"""The ONNX target: export of the captured program at a chosen opset, simplification, ONNX Runtime sessions.

Opset 18 and above: the dynamo exporter, straight from the captured ExportedProgram. Below 18 (the shipped
recipes' 17, which TensorRT 8.6 parses): the TorchScript exporter on a trace of that program, the only exporter
that writes those opsets. Measured on l1/l3/l7 (folded, onnxsim): both give the same node counts and op types,
and their ONNX Runtime latencies agree within the measurement noise.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from efexport.exporter.manifest import model_file_entries
from efexport.exporter.quiet import quieted
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.targets.base import ExportedModel
from efexport.exporter.targets.onnx.cleanup import constants_to_initializers
from efexport.exporter.targets.onnx.quantize import OnnxQuantizer

MODEL_FILE = "model.onnx"


DYNAMO_MIN_OPSET = 18  # the dynamo exporter's lowest opset: asked for 17, it returns opset 18 unconverted


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    simplifier: str
    op_counts: dict[str, int]
    capture: str  # what the file was converted from: capture.EXPORT or capture.TRACE


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


def _torchscript_export(captured: CapturedGraph, opset: int) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=False)`` of the captured program's trace: opsets below 18."""
    (image,), (logits,) = captured.inputs, captured.outputs
    dynamic = {image.name: {0: "batch"}, logits.name: {0: "batch"}} if captured.dynamic_batch else None
    traced = captured.traced(f"ONNX opset {opset}: the dynamo exporter writes opset {DYNAMO_MIN_OPSET} and above "
                             "only, so the TorchScript exporter converts a trace of the captured program")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(traced, (captured.example,), buffer, input_names=[image.name],
                          output_names=[logits.name], opset_version=opset, dynamic_axes=dynamic,
                          do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _quiet_dynamo_exporter() -> AbstractContextManager[None]:
    """The dynamo exporter logs warnings about packages it does not need (torchvision's ops) and may print
    progress: neither belongs on our console, and stdout carries ``--json`` output."""
    return quieted("torch.onnx")


def _dynamo_export(captured: CapturedGraph, opset: int) -> onnx.ModelProto:
    """The dynamo exporter on the captured ExportedProgram (opset 18 and above), with the batch axis named
    "batch" (it names it after its symbol, e.g. "s77") and without the per-node metadata it adds (stack traces
    with this machine's source paths: the same model exported elsewhere must give the same bytes)."""
    (image,), (logits,) = captured.inputs, captured.outputs
    with _quiet_dynamo_exporter():
        program = torch.onnx.export(captured.program, (), dynamo=True, opset_version=opset,
                                    input_names=[image.name], output_names=[logits.name], verbose=False)
    model = program.model_proto
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    if captured.dynamic_batch:
        symbol = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
        for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == symbol:
                    dim.dim_param = "batch"
    return model


def export_onnx(captured: CapturedGraph, path: Path, opset: int, simplifier: str) -> OnnxExport:
    """``captured`` as ONNX at ``opset``, simplified, constants as initializers, checked, saved to ``path``."""
    if opset >= DYNAMO_MIN_OPSET:
        exported = _dynamo_export(captured, opset)
    else:
        exported = _torchscript_export(captured, opset)
    model = _simplify(exported, simplifier)
    constants_to_initializers(model)
    onnx.checker.check_model(model)
    written = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if written != opset:  # an exporter that cannot convert may return another opset without failing
        raise RuntimeError(f"asked for ONNX opset {opset}, the exporter wrote opset {written}")
    onnx.save(model, path)
    return OnnxExport(path, opset, simplifier, op_counts(model), captured.method)


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

    def quantizer(self, float_model: Path, calibration: np.ndarray, workdir: Path, recipe: Recipe) -> OnnxQuantizer:
        """ONNX Runtime's QDQ quantization, uint8 activations: what its CPU integer kernels run fastest."""
        settings = recipe.quantization
        return OnnxQuantizer(float_model, calibration, workdir, settings.method, settings.per_channel)

    def finish_quantized(self, exported: ExportedModel, recipe: Recipe) -> ExportedModel:
        """The integer model's op counts (QuantizeLinear, DequantizeLinear, ...) in its facts."""
        counts = op_counts(onnx.load(exported.path, load_external_data=False))
        return ExportedModel(exported.path, exported.facts | {"op_counts": counts})
