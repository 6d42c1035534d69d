"""The Core AI target: an ``.aimodel`` asset converted by coreai-torch from the captured ExportedProgram.

What the asset computes, from its input to its output::

    image (1, 3, H, W), ImageNet-normalised, float16 in an FP16 asset (coreai-opt's cast makes the whole
    program 16-bit, its input and output included), float32 in an FP32 one
      -> folded EfficientFormer, in the form Core AI computes correctly (the include-pad-pooling fold pass)
      -> logits (1, num_classes)

The class labels and efexport's facts are in the asset's metadata (``metadata.json``: author, license,
description, and creator-defined entries). Parity runs the asset on Apple's Core AI runtime
(``validate.coreai_runtime``).
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from efexport.exporter.labels import read_labels
from efexport.exporter.manifest import model_description, model_file_entries
from efexport.exporter.output import write_failure
from efexport.exporter.quiet import quieted
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.targets.base import ExportedModel
from efexport.exporter.targets.coreai.quantize import CONVERTER_LOGGERS, CoreAIQuantizer
from efexport.validate.coreai_runtime import (
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAME,
    CoreAIRunner,
    coreai_core_version,
    runtime_runners,
)
from efexport.validate.isolated import RuntimeCrashed, call_isolated

MODEL_FILE = "model.aimodel"
LABELS_KEY = "classLabels"  # creator-defined metadata: one label per logit, in order
VERSION_KEY = "version"  # the asset metadata has author, license and description fields, but no version


def quiet_converters() -> AbstractContextManager[None]:
    """coreai-torch prints a banner and a progress bar on stdout (which ``--json`` owns); importing coreai-opt
    makes torchao log a warning about a CUDA kernel library and torch one about an Enum registration."""
    return quieted(*CONVERTER_LOGGERS)


def convert(captured: CapturedGraph, precision: str):
    """The captured program as a Core AI AIProgram: decomposed with coreai-torch's table, cast to 16 bits by
    coreai-opt for FP16, converted in release mode (no source paths or stack traces in the asset: the same model
    gives the same bytes wherever it is converted)."""
    return convert_program(captured.program, captured.example if precision == "fp16" else None)


def convert_program(program, fp16_example=None):
    """An ExportedProgram (the captured one, or an int8 candidate's) as an AIProgram; cast to 16 bits by
    coreai-opt, calibrated on ``fp16_example``, when that is given."""
    with quiet_converters():
        import coreai_torch

        program = program.run_decompositions(coreai_torch.get_decomp_table())
        if fp16_example is not None:
            from coreai_opt.casting import cast_fp32_to_fp16

            # calibration_data: ops whose activations exceed float16's range on the example stay in float32
            program = cast_fp32_to_fp16(program, calibration_data=[(fp16_example,)])
        converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
        converter.add_exported_program(program, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        return converter.to_coreai()


def set_metadata(path: Path, facts: dict[str, str], custom: dict[str, object]) -> None:
    """author / license / description, and the creator-defined entries (``custom`` replaces them all).

    ``metadata.json`` is then rewritten with sorted keys and without a creation date: coreai-core writes the keys
    in hash order and stamps the time, so two conversions of one model would differ in bytes that mean nothing."""
    from coreai.authoring.asset import AIModelAsset

    def update(metadata) -> None:
        metadata.author, metadata.license = facts["author"], facts["license"]
        metadata.model_description = facts["description"]
        metadata.creation_date = None
        for key in list(metadata.creator_defined_metadata):
            metadata.remove_custom(key)
        for key in sorted(custom):
            metadata.set_custom(key, custom[key])

    AIModelAsset.load(path).update_metadata(update)
    file = path / METADATA_FILE
    file.write_text(json.dumps(json.loads(file.read_text()), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_metadata(path: Path) -> dict:
    """The asset's metadata as the runtime reads it: author, license, description and the creator-defined
    entries."""
    from coreai.authoring.asset import AIModelAsset

    metadata = AIModelAsset.load(path).metadata
    return {"author": metadata.author, "license": metadata.license, "description": metadata.model_description,
            **dict(metadata.creator_defined_metadata)}


_NDARRAY = re.compile(r"NDArray \((?P<dtype>\w+), (?P<shape>[\d × ]+)\)")


def _interface_entry(name: str, description: str, kind: str) -> dict:
    """One input or output as the asset's summary describes it, e.g. 'NDArray (Float16, 1 × 3 × 224 × 224)'."""
    match = _NDARRAY.fullmatch(description)
    if match is None:
        raise RuntimeError(f"Core AI asset: {name}: unexpected signature {description!r}")
    dtype = match["dtype"].lower()
    return {"name": name, "type": f"{dtype} {kind}", "dtype": dtype,
            "shape": [int(d) for d in match["shape"].split("×")]}


def asset_facts(path: Path) -> dict:
    """What the saved asset says of itself: its interface, op counts and storage types (per scalar type, how
    many values)."""
    from coreai.authoring.asset import AIModelAsset

    summary = AIModelAsset.load(path).summary(include_statistics=True)
    (name, description), = summary.function_inputs("main")
    (out_name, out_description), = summary.function_outputs("main")
    return {
        "interface": {"inputs": [_interface_entry(name, description, "tensor, ImageNet-normalised")],
                      "outputs": [_interface_entry(out_name, out_description, "logits")]},
        "op_counts": {op: count for op, count in sorted(summary.operation_distribution) if op != "constant"},
        "storage_types": dict(sorted(summary.storage_types)),
    }


def _write_asset(program, path: Path, minimum_os: str) -> None:
    """``program.save_asset(path)``, in a forked child where that is safe.

    coreai-core's serializer ends the process (LLVM's fatal error: "IO failure on output stream") when the disk
    refuses a write, where it should raise: in a child, its death becomes an OutputError (exporter.output), the
    staging folder goes, and ``efexport all`` carries on. Before saving, the program is verified on its MLIR
    context's thread pool, whose threads a forked child does not have (it would wait for them forever): the
    context is made single-threaded first. Where that switch is not reachable (it is not public API), the
    asset is written in this process.
    """
    from coreai.authoring.asset import OSVersion

    def save() -> dict:
        with quiet_converters():
            program.save_asset(path, minimum_os=OSVersion(f"v{minimum_os}"))
        return {}

    try:
        context = program._module._mlir_module.context
    except AttributeError:
        save()
        return
    context.enable_multithreading(False)
    try:
        call_isolated(save, "Core AI asset writer")
    except RuntimeCrashed as exc:  # a refused write is the user's to fix (exit 4), not a failed tool
        raise write_failure(exc) or exc from None


class CoreAITarget:
    """Core AI: an ``.aimodel`` asset (FP16 by default), labels and facts in its metadata, parity on Apple's Core
    AI runtime everywhere coreai-core installs, latency per compute unit on macOS 27+."""

    name = "coreai"
    model_file = MODEL_FILE
    latency_unavailable = ("the Core AI runtime here is coreai-core's Linux reference build (CPU): it proves parity "
                           "but its speed says nothing about a device, so nothing was timed; latency is measured "
                           "per compute unit on macOS 27+")

    def describe(self, recipe: Recipe) -> str:
        settings = recipe.coreai
        return f"Core AI .aimodel {recipe.precision}, iOS/macOS {settings.minimum_os}+, {settings.input} input"

    def preflight(self, recipe: Recipe, num_classes: int) -> None:
        read_labels(recipe.coreai.labels, num_classes)

    def export(self, captured: CapturedGraph, staging: Path, recipe: Recipe) -> ExportedModel:
        """The asset (int8: the float32 one, which the quantize stage's candidates replace; the captured graph is
        kept for them)."""
        settings = recipe.coreai
        labels = read_labels(settings.labels, int(captured.outputs[0].shape[-1]))
        path = staging / MODEL_FILE

        program = convert(captured, recipe.precision)
        self._labels = labels
        if recipe.precision == "int8":  # the float32 asset the quantize stage starts from; its candidates replace it
            self._captured = captured
        _write_asset(program, path, settings.minimum_os)
        return ExportedModel(path, self._facts(path, recipe))

    def _facts(self, path: Path, recipe: Recipe) -> dict:
        """Labels, version and author into the asset's metadata, and the manifest's facts of the asset."""
        settings = recipe.coreai
        set_metadata(path, {"author": settings.author, "license": settings.license, "description": ""},
                     {LABELS_KEY: self._labels, VERSION_KEY: settings.version})
        converter = f"coreai-torch {_version('coreai-torch')}"
        if recipe.precision == "fp16":
            converter += f", coreai-opt {_version('coreai-opt')} cast_fp32_to_fp16"
        elif recipe.precision == "int8":
            converter += f", coreai-opt {_version('coreai-opt')} Quantizer (int8 weights and activations)"
        return {
            "format": "coreai", "model_file": MODEL_FILE, "package": "Core AI asset (.aimodel)",
            "precision": recipe.precision, "minimum_os": settings.minimum_os, "input": settings.input,
            "labels": {"source": settings.labels, "count": len(self._labels), "metadata_key": LABELS_KEY},
            "converter": converter,
            "runtime": f"coreai-core {coreai_core_version()}",
            **asset_facts(path),
        }

    def quantizer(self, float_model: Path, calibration: np.ndarray, workdir: Path,
                  recipe: Recipe) -> CoreAIQuantizer:
        """coreai-opt's W8A8 post-training quantization of the program this target exported (prepared and
        calibrated once; each candidate re-converted with some groups left in float)."""
        captured = getattr(self, "_captured", None)
        if captured is None:
            raise RuntimeError("Core AI quantizer: the target exported no int8 float model to quantize")
        minimum_os = recipe.coreai.minimum_os
        return CoreAIQuantizer(captured, float_model, calibration, recipe.quantization.per_channel,
                               convert_program, lambda program, path: _write_asset(program, path, minimum_os))

    def finish_quantized(self, exported: ExportedModel, recipe: Recipe) -> ExportedModel:
        """The chosen candidate replaced the float asset: its metadata written again, its facts (op counts,
        storage types) read from it."""
        self._captured = None
        return ExportedModel(exported.path, self._facts(exported.path, recipe))

    def open_runner(self, path: Path, threads: int) -> CoreAIRunner:
        # while int8 candidates are tried (between export and finish_quantized), each run in a child process:
        # the runtime must not have run in this one when the validate stage forks its own run
        return CoreAIRunner(path, isolated=getattr(self, "_captured", None) is not None)

    def extra_runtimes(self, path: Path, recipe: Recipe) -> list:
        return runtime_runners(path)

    def embed_metadata(self, path: Path, entries: dict[str, str]) -> None:
        current = read_metadata(path)
        custom = {LABELS_KEY: current[LABELS_KEY], VERSION_KEY: current[VERSION_KEY], **model_file_entries(entries)}
        set_metadata(path, {"author": current["author"], "license": current["license"],
                            "description": model_description(entries)}, custom)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
