"""The Core ML target: an ML Program ``.mlpackage`` for iPhone, checked off macOS by executing its program.

What the package computes, from its input to its outputs::

    image (RGB ImageType, pixels 0-255)
      -> x / 255 - mean          (the ImageType's scale and per-channel bias)
      -> x * (1 / std)           (in the graph: the per-channel part the ImageType cannot express)
      -> folded EfficientFormer -> logits (fp32 output)
      -> softmax -> probabilities -> classify -> classLabel, classLabel_probs (Xcode's classifier preview)

With ``input = "tensor"`` the input is the normalised float tensor the ONNX artifact takes. Parity here runs
the saved program with ``validate.mil_interpreter``; on macOS ``validate.coreml_runtime`` adds Core ML itself.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from efexport.exporter.errors import RecipeError
from efexport.exporter.labels import read_labels
from efexport.exporter.manifest import model_description, model_file_entries
from efexport.exporter.preprocessing import IMAGENET
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.targets.base import ExportedModel
from efexport.exporter.targets.coreml.quantize import (
    GROUPS_KEY,
    CoreMLQuantizer,
    compression_pass,
    describe_compression,
    node_groups,
)
from efexport.validate.coreml_io import (
    INPUT_NAME,
    LABEL,
    LOGITS,
    PROBABILITIES,
    import_coremltools,
    normalised_to_pixels,
    quiet_coremltools,
)
from efexport.validate.coreml_runtime import runtime_runners
from efexport.validate.mil_interpreter import (
    FP16_MAX,
    ProgramRun,
    compare_runs,
    first_divergence,
    load_program,
    run_program,
)

MODEL_FILE = "model.mlpackage"
SPEC_FILE = Path("Data/com.apple.CoreML/model.mlmodel")


class DeployedClassifier(nn.Module):
    """The captured model with the input scaling the ImageType leaves to the graph, and a softmax output.

    Never switched to train/eval mode: the captured program's module refuses both, and nothing here depends on it.
    """

    def __init__(self, captured: nn.Module, inverse_std: torch.Tensor | None) -> None:
        super().__init__()
        self.captured = captured
        self.register_buffer("inverse_std", None if inverse_std is None else inverse_std.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inverse_std is not None:
            x = x * self.inverse_std
        logits = self.captured(x)
        return logits, logits.softmax(dim=-1)


def _input_type(recipe: Recipe, image_size: int):
    ct = import_coremltools()

    shape = (1, 3, image_size, image_size)
    if recipe.coreml.input == "tensor":
        return ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)
    return ct.ImageType(name=INPUT_NAME, shape=shape, scale=1 / 255, bias=[-m for m in IMAGENET.mean],
                        color_layout=ct.colorlayout.RGB)


def convert(captured: CapturedGraph, recipe: Recipe, labels: list[str], precision: str):
    """Convert the deployed classifier, from the captured ExportedProgram, to an ML Program MLModel (not yet saved).

    The classifier wraps the captured program's module with the ImageType's per-channel scale and the softmax
    output, and is exported once more (a fixed batch of 1, as Core ML packages here have) so that coremltools
    converts one ExportedProgram. Measured on l1/l3/l7 FP16: the same program as converting a TorchScript trace
    (op counts per type equal, 0 transposes, 1 reshape, the same interpreter outputs).
    """
    ct = import_coremltools()

    image_size = captured.example.shape[-1]
    inverse_std = None if recipe.coreml.input == "tensor" else 1 / torch.tensor(IMAGENET.std)
    wrapped = DeployedClassifier(captured.program.module(), inverse_std)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # run_decompositions({}): the inference ATen graph coremltools' frontend takes, with no op decomposed
        # (conv, linear, layer_norm, gelu stay whole and map to one MIL op each)
        exported = torch.export.export(wrapped, (captured.example,), strict=False).run_decompositions({})
    target = getattr(ct.target, recipe.coreml.minimum_deployment_target)
    input_type = _input_type(recipe, image_size)
    with quiet_coremltools():
        # Two steps: coremltools cannot attach a classifier to a program with two declared outputs in one call.
        # int8 starts from the FP16 program: its quantize stage adds the integer ops (CoreMLTarget.quantizer).
        compute_precision = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
        program = ct.convert(exported, inputs=[input_type], convert_to="milinternal", minimum_deployment_target=target,
                             compute_precision=compute_precision,
                             outputs=[ct.TensorType(name=LOGITS, dtype=np.float32),
                                      ct.TensorType(name=PROBABILITIES)])
        program.functions["main"].set_output_types(None)
        compression = compression_pass(recipe.coreml.compress) if precision != "int8" else None
        if compression is not None:  # weights only: constexpr ops the runtime expands at load time
            compression(program)  # __call__: in a graph-pass scope, as the converter runs its passes
        mlmodel = ct.convert(
            program, inputs=[input_type], convert_to="mlprogram", minimum_deployment_target=target,
            compute_precision=compute_precision,
            compute_units=getattr(ct.ComputeUnit, recipe.coreml.compute_units),
            classifier_config=ct.ClassifierConfig(labels, predicted_feature_name=LABEL,
                                                  predicted_probabilities_output=PROBABILITIES),
        )
    if precision == "int8":  # the quantizer's node groups: captured node name -> group (replaced by the package stage)
        mlmodel.user_defined_metadata[GROUPS_KEY] = json.dumps(node_groups(captured.program), sort_keys=True)
    return mlmodel


def program_op_counts(mlmodel) -> dict[str, int]:
    return _op_counts(mlmodel._mil_program)


def _op_counts(program) -> dict[str, int]:
    operations = program.functions["main"].operations
    return dict(sorted(Counter(op.op_type for op in operations if op.op_type != "const").items()))


def set_metadata(package: Path, recipe_facts: dict[str, str], entries: dict[str, str]) -> None:
    """Write author/license/version/description and the user-defined entries into the package's spec.

    Only the spec file changes (weights untouched): coremltools re-reads it and nothing else refers to its bytes.
    """
    ct = import_coremltools()

    spec = ct.utils.load_spec(str(package))
    meta = spec.description.metadata
    meta.author, meta.license = recipe_facts["author"], recipe_facts["license"]
    meta.versionString, meta.shortDescription = recipe_facts["version"], recipe_facts["description"]
    meta.userDefined.clear()
    for key in sorted(entries):
        meta.userDefined[key] = entries[key]
    (package / SPEC_FILE).write_bytes(spec.SerializeToString())


def read_metadata(package: Path) -> dict[str, str]:
    ct = import_coremltools()

    with quiet_coremltools():
        spec = ct.utils.load_spec(str(package))
    meta = spec.description.metadata
    return {"author": meta.author, "license": meta.license, "version": meta.versionString,
            "description": meta.shortDescription, **dict(meta.userDefined)}


def stable_package_identifiers(package: Path) -> bool:
    """Replace the random UUIDs coremltools gives the items of an .mlpackage by ones derived from each item's
    path, so converting the same model twice gives the same bytes. Identifiers only need to be unique within
    the package. Returns whether anything changed.

    Manifest.json before: {"itemInfoEntries": {"<random uuid4>": {"path": "com.apple.CoreML/model.mlmodel"..}},
                           "rootModelIdentifier": "<the same random uuid4>"}
    after:                 the same, with uuid5(efexport namespace, item path) in both places
    """
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(_PACKAGE_NAMESPACE, entry["path"]))
               for old, entry in manifest["itemInfoEntries"].items()}
    if all(old == new for old, new in renamed.items()):
        return False
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed.get(manifest["rootModelIdentifier"], manifest["rootModelIdentifier"])
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")  # as coremltools writes it
    return True


_PACKAGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://efexport.invalid/mlpackage-items")


def compressed_gate(op_counts: dict[str, int]) -> str | None:
    """The precision whose parity gate (``parity.tolerances.<precision>``) a package with compressed weights and
    float activations meets: int8's (its weights are integers: 8-bit values or 6-bit table indices; cosine and
    top-1 agreement, no max_abs); None for others (uncompressed, or W8A8, whose recipe precision is int8)."""
    compressed = any(op_counts.get(op) for op in ("constexpr_affine_dequantize", "constexpr_lut_to_dense",
                                                  "constexpr_blockwise_shift_scale"))
    return "int8" if compressed and not op_counts.get("quantize") else None


class MilInterpreterRunner:
    """Runs the saved ML Program with efexport's reference interpreter (validate.mil_interpreter), one input at a
    time, and keeps the largest |activation| of every op over all calls (FP16 headroom)."""

    backend = "efexport-mil-interpreter"
    is_deployment_runtime = False  # a reference execution: its timings say nothing about a device
    static_batch = 1

    def __init__(self, path: Path, threads: int) -> None:
        ct = import_coremltools()
        with quiet_coremltools():
            self.program = load_program(path)
            spec = ct.utils.load_spec(str(path))
        self.image_input = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        self.threads = threads
        # compressed weights and float activations (coreml.compress): gated by the int8 table (None: the recipe's own
        # precision's gate)
        self.precision = compressed_gate(_op_counts(self.program))
        self.runtime_version = f"coremltools {ct.__version__} program loader"
        self.op_max_abs: dict[str, tuple[str, str, float]] = {}  # var -> (op type, dtype, max |x|)

    def run_one(self, normalised: np.ndarray, trace: bool = False, round_fp16: bool = True) -> ProgramRun:
        feed = normalised_to_pixels(normalised[None]) if self.image_input else normalised[None]
        return run_program(self.program, {INPUT_NAME: feed}, trace=trace, threads=self.threads,
                           round_fp16=round_fp16)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        outputs = []
        for single in inputs:
            run = self.run_one(single)
            for record in run.ops:
                seen = self.op_max_abs.get(record.var_name, ("", "", 0.0))[2]
                self.op_max_abs[record.var_name] = (record.op_type, record.dtype, max(seen, record.max_abs))
            outputs.append(np.asarray(run.outputs[LOGITS], dtype=np.float32))
        return np.concatenate(outputs)

    def trace(self, normalised: np.ndarray, rel_tol: float = 1e-2) -> dict:
        """Per op, how far FP16 activation rounding has moved its output from the same program run with float32
        activations (same stored weights) on one input: where the error grows, and the first op past rel_tol."""
        rounded = self.run_one(normalised, trace=True)
        wide = self.run_one(normalised, trace=True, round_fp16=False)
        diffs = compare_runs(wide, rounded)
        first = first_divergence(diffs, rel_tol)
        return {
            "baseline": "the same program with float32 activations (round_fp16=False)",
            "rel_tol": rel_tol,
            "first_past_rel_tol": None if first is None else {"op": first.op_type, "var": first.candidate_var,
                                                              "rel_err": first.rel_err},
            "ops": [{"op": d.op_type, "var": d.candidate_var, "max_abs": d.reference_max_abs,
                     "abs_err": d.sample_max_err, "rel_err": d.rel_err} for d in diffs],
        }

    def report(self) -> dict:
        """FP16 headroom: the ops whose activations came closest to float16's largest value."""
        fp16 = [(name, op, value) for name, (op, dtype, value) in self.op_max_abs.items() if dtype == "fp16"]
        closest = sorted(fp16, key=lambda item: -item[2])[:10]
        return {"reference_execution": {
            "interpreter": "efexport.validate.mil_interpreter (NumPy/PyTorch kernels, fp16 outputs rounded per op)",
            "ops_executed": len(self.op_max_abs),
            "fp16_limit": FP16_MAX,
            "fp16_largest_activations": [
                {"var": name, "op": op, "max_abs": value, "fraction_of_limit": value / FP16_MAX}
                for name, op, value in closest],
            "fp16_overflow": any(value > FP16_MAX or not np.isfinite(value) for _, _, value in fp16),
        }}


class CoreMLTarget:
    """Core ML: ML Program .mlpackage (FP16 by default), classifier outputs, metadata, reference-interpreter
    parity everywhere and Core ML runtime parity and latency on macOS."""

    name = "coreml"
    model_file = MODEL_FILE

    def describe(self, recipe: Recipe) -> str:
        settings = recipe.coreml
        return (f"Core ML ML Program {recipe.precision}, {settings.minimum_deployment_target}, "
                f"{settings.input} input, compute units {settings.compute_units}")

    def preflight(self, recipe: Recipe, num_classes: int) -> None:
        read_labels(recipe.coreml.labels, num_classes)

    def export(self, captured: CapturedGraph, staging: Path, recipe: Recipe) -> ExportedModel:
        settings = recipe.coreml
        num_classes = captured.outputs[0].shape[-1]
        labels = read_labels(settings.labels, int(num_classes))
        mlmodel = convert(captured, recipe, labels, recipe.precision)
        path = staging / MODEL_FILE
        with quiet_coremltools():
            mlmodel.save(str(path))
        stable_package_identifiers(path)
        image_size = captured.example.shape[-1]
        interface = {
            "inputs": [{"name": INPUT_NAME, "type": "image RGB, pixels 0-255", "shape": [1, 3, image_size, image_size],
                        "scale": 1 / 255, "bias": [-m for m in IMAGENET.mean],
                        "in_graph_scale": [1 / s for s in IMAGENET.std]}
                       if settings.input == "image" else
                       {"name": INPUT_NAME, "type": "float32 tensor, ImageNet-normalised",
                        "shape": [1, 3, image_size, image_size]}],
            "outputs": [{"name": LABEL, "type": "string"}, {"name": f"{LABEL}_probs", "type": "dict label -> prob"},
                        {"name": LOGITS, "type": "float32", "shape": [1, int(num_classes)]}],
        }
        return ExportedModel(path, {
            "format": "coreml", "model_file": MODEL_FILE, "package": "mlpackage (ML Program)",
            "precision": recipe.precision, "minimum_deployment_target": settings.minimum_deployment_target,
            "compute_units": settings.compute_units, "input": settings.input,
            "labels": {"source": settings.labels, "count": len(labels)}, "interface": interface,
            "op_counts": program_op_counts(mlmodel),
            **({"compression": describe_compression(settings.compress)}
               if settings.compress != "none" and recipe.precision != "int8" else {}),
        })

    def quantizer(self, float_model: Path, calibration: np.ndarray, workdir: Path, recipe: Recipe) -> CoreMLQuantizer:
        """W8A8 with coremltools' passes, activation ranges measured by the reference interpreter."""
        method = recipe.quantization.method
        if method == "entropy":
            raise RecipeError("quantization.method: the Core ML target calibrates with minmax or percentile ranges "
                              "(coremltools' activation passes take a min and a max per tensor), not entropy")
        return CoreMLQuantizer(float_model, calibration, workdir, method, recipe.coreml.compute_units,
                               recipe.quantization.per_channel, recipe.coreml.minimum_deployment_target)

    def finish_quantized(self, exported: ExportedModel, recipe: Recipe) -> ExportedModel:
        """The integer package's op counts (quantize, dequantize, constexpr_affine_dequantize, ...) in its facts."""
        stable_package_identifiers(exported.path)
        with quiet_coremltools():
            counts = _op_counts(load_program(exported.path))
        return ExportedModel(exported.path, exported.facts | {"op_counts": counts})

    latency_unavailable = ("Core ML runs only on macOS: this host has no Core ML runtime, so parity came from the "
                           "reference interpreter and nothing was timed")

    def open_runner(self, path: Path, threads: int) -> MilInterpreterRunner:
        return MilInterpreterRunner(path, threads)

    def extra_runtimes(self, path: Path, recipe: Recipe) -> list:
        runners = runtime_runners(path)
        if runners:  # macOS: Core ML itself meets the gate the interpreter met (compressed weights: int8's)
            with quiet_coremltools():
                gate = compressed_gate(_op_counts(load_program(path)))
            for runner in runners:
                runner.precision = gate
        return runners

    def embed_metadata(self, path: Path, entries: dict[str, str]) -> None:
        facts = _metadata_facts(entries)
        set_metadata(path, facts, model_file_entries(entries))


def _metadata_facts(entries: dict[str, str]) -> dict[str, str]:
    recipe = json.loads(entries["efexport.recipe"])["values"]
    return {"author": recipe["coreml"]["author"], "license": recipe["coreml"]["license"],
            "version": recipe["coreml"]["version"], "description": model_description(entries)}
