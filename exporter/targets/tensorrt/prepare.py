"""The TensorRT target: a portable half built and proven anywhere, and an engine where TensorRT and a GPU exist.

Portable half (every machine): the folded graph as a TensorRT-ready ONNX (opset and ops TensorRT's parser
takes, checked against ``exporter/data/tensorrt_onnx_ops.toml``; batch through an optimization profile), its
parity under ONNX Runtime, the build options, ``build_engine.sh`` (stock trtexec, equivalent flags) and the
``engine.json`` sidecar. GPU half (``exporter.targets.tensorrt_api``, the only module importing TensorRT):
``model.plan`` and the timing cache, engine parity, CUDA-event latency per profile batch size.
"""

from __future__ import annotations

import json
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from efexport.exporter.errors import EfexportError, ExitCode
from efexport.exporter.manifest import model_file_entries, sha256_of
from efexport.exporter.recipes import Recipe
from efexport.exporter.stages.capture import CapturedGraph
from efexport.exporter.targets.base import ExportedModel
from efexport.exporter.targets.onnx.export import MODEL_FILE, OnnxRunner, export_onnx, op_counts, set_metadata
from efexport.exporter.targets.onnx.quantize import OnnxQuantizer
from efexport.exporter.targets.tensorrt.embedded import SIDECAR_FILE, SIDECAR_SCHEMA
from efexport.exporter.targets.tensorrt.options import (
    PLAN_FILE,
    BuildOptions,
    Profile,
    build_script,
    nodes_pinned_to_fp32,
    trtexec_command,
)

SCRIPT_FILE = "build_engine.sh"
RECIPE_COPY = "build_recipe.toml"


class UnsupportedOpError(EfexportError):
    """The prepared graph has a node TensorRT's ONNX parser does not take."""

    exit_code = ExitCode.STAGE_FAILED


class EngineRequiredError(EfexportError):
    """--require-engine, and no engine can be built here."""

    exit_code = ExitCode.ENGINE_REQUIRED


@cache
def supported_ops() -> dict:
    """The op-support table (data), read once."""
    return tomllib.loads(resources.files("efexport.exporter.data").joinpath("tensorrt_onnx_ops.toml").read_text())


def check_ops(model: onnx.ModelProto) -> dict:
    """Fail naming the first node whose op TensorRT's parser does not take; report what the graph needs."""
    table = supported_ops()
    known = set(table["supported"]) | set(table["added"])
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            where = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise UnsupportedOpError(f"node {node.name!r} is a {where}, which TensorRT's ONNX parser does not "
                                     f"support (table: {table['source']})")
    used = sorted({node.op_type for node in model.graph.node})
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    needs = {op: table["added"][op] for op in used if op in table["added"]}
    if opset > table["max_opset"]:
        needs[f"opset {opset}"] = "TensorRT 10"
    return {"ops": used, "table": table["source"], "opset": opset, "needs": needs,
            "restrictions": {op: table["supported"][op] for op in used if table["supported"].get(op)}}


def build_options(recipe: Recipe, model: onnx.ModelProto) -> BuildOptions:
    settings = recipe.tensorrt
    # fp32 needs no pins; int8 is strongly typed (the Q/DQ pairs decide, pins are not allowed)
    reduced_float = recipe.precision not in ("fp32", "int8")
    pinned = nodes_pinned_to_fp32(model, tuple(settings.fp32_ops)) if reduced_float else ()
    return BuildOptions(
        input_name=model.graph.input[0].name, image_size=recipe.export.image_size, precision=recipe.precision,
        profile=Profile(*settings.profile) if recipe.export.dynamic_batch else None, fp32_layers=pinned,
        workspace_mib=settings.workspace_mib, optimization_level=settings.optimization_level,
        timing_cache=settings.timing_cache, hardware_compatibility=settings.hardware_compatibility,
        version_compatible=settings.version_compatible,
    )


def engine_unavailable_reason() -> str | None:
    from efexport.exporter.targets.tensorrt.api import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


class PreparedOnnxRunner(OnnxRunner):
    """ONNX Runtime on the prepared ONNX: proves the file TensorRT will parse computes the model."""

    backend = "onnxruntime-cpu (prepared ONNX)"
    is_deployment_runtime = False  # CPU timings say nothing about a TensorRT engine

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__(path, threads)
        # the gate of the file it runs: fp32 (TensorRT applies fp16/bf16 at build time), or int8 when the file
        # carries its Q/DQ pairs (explicit quantization: ONNX Runtime computes what the engine will)
        ops = {node.op_type for node in onnx.load(path, load_external_data=False).graph.node}
        self.precision = "int8" if "QuantizeLinear" in ops else "fp32"


class TensorRTTarget:
    """TensorRT: prepared ONNX + build recipe + build_engine.sh + engine.json everywhere; model.plan, engine
    parity and GPU latency where TensorRT and a CUDA device exist."""

    name = "tensorrt"
    model_file = MODEL_FILE
    latency_unavailable = "no TensorRT engine was built here (see engine.json), so there was nothing to time"

    @staticmethod
    def runtime_unavailable_reason() -> str | None:
        """Why an engine cannot run on this machine (for verify), or None."""
        return engine_unavailable_reason()

    def describe(self, recipe: Recipe) -> str:
        settings = recipe.tensorrt
        batch = f"profile {settings.profile}" if recipe.export.dynamic_batch else "batch 1"
        return f"TensorRT {recipe.precision} for {settings.gpu}, ONNX opset {recipe.export.opset}, {batch}"

    def preflight(self, recipe: Recipe, num_classes: int) -> None:
        reason = engine_unavailable_reason()
        if reason and recipe.tensorrt.require_engine:
            raise EngineRequiredError(f"--require-engine: no TensorRT engine can be built here: {reason}")

    def export(self, captured: CapturedGraph, staging: Path, recipe: Recipe) -> ExportedModel:
        exported = export_onnx(captured, staging / MODEL_FILE, recipe.export.opset, recipe.export.simplifier)
        facts = {"format": "tensorrt", "model_file": MODEL_FILE, "precision": recipe.precision,
                 "gpu": recipe.tensorrt.gpu, "opset": exported.opset, "simplifier": exported.simplifier,
                 "dynamic_batch": recipe.export.dynamic_batch}
        if recipe.precision == "int8":  # the quantize stage replaces model.onnx; finish_quantized builds from it
            return ExportedModel(exported.path, facts)
        return self._prepare_build(ExportedModel(exported.path, facts), recipe)

    def _prepare_build(self, exported: ExportedModel, recipe: Recipe) -> ExportedModel:
        """Op check, build options, build_engine.sh, the recipe copy and (where possible) the engine, from the
        prepared ONNX as it will ship."""
        staging = exported.path.parent
        model = onnx.load(exported.path, load_external_data=False)
        support = check_ops(model)
        options = build_options(recipe, model)
        script = staging / SCRIPT_FILE
        script.write_text(build_script(options, MODEL_FILE))
        script.chmod(0o755)
        (staging / RECIPE_COPY).write_text(_recipe_toml(recipe))
        engine = self._build_engine(staging, options)
        return ExportedModel(exported.path, exported.facts | {
            "op_counts": op_counts(model), "tensorrt_op_support": support, "build_options": options.to_dict(),
            "trtexec": trtexec_command(options, MODEL_FILE), "engine": engine,
        })

    def quantizer(self, float_model: Path, calibration: np.ndarray, workdir: Path, recipe: Recipe) -> OnnxQuantizer:
        """ONNX Runtime's QDQ quantization with symmetric int8 activations (zero points 0): what TensorRT's
        explicit quantization takes."""
        settings = recipe.quantization
        return OnnxQuantizer(float_model, calibration, workdir, settings.method, settings.per_channel,
                             symmetric_activations=True)

    def finish_quantized(self, exported: ExportedModel, recipe: Recipe) -> ExportedModel:
        """The Q/DQ graph checked against TensorRT's parser table, its strongly typed build prepared (and run where
        TensorRT and a GPU exist)."""
        return self._prepare_build(exported, recipe)

    def _build_engine(self, staging: Path, options: BuildOptions) -> dict:
        reason = engine_unavailable_reason()
        if reason:
            return {"built": False, "reason": reason}
        from efexport.exporter.targets.tensorrt.api import build_engine

        facts = build_engine(staging / MODEL_FILE, staging / PLAN_FILE, options, staging / options.timing_cache)
        return {"built": True, "plan_file": PLAN_FILE, "sha256": sha256_of(staging / PLAN_FILE),
                "timing_cache_sha256": sha256_of(staging / options.timing_cache), **facts}

    def open_runner(self, path: Path, threads: int) -> PreparedOnnxRunner:
        return PreparedOnnxRunner(path, threads)

    def extra_runtimes(self, path: Path, recipe: Recipe) -> list:
        plan = path.parent / PLAN_FILE
        if not plan.exists() or engine_unavailable_reason():  # e.g. verifying a package on a machine without a GPU
            return []
        from efexport.exporter.targets.tensorrt.engine import TimedEngineRunner

        return [TimedEngineRunner(plan, recipe)]

    def embed_metadata(self, path: Path, entries: dict[str, str]) -> None:
        """ONNX metadata_props, and engine.json beside the files: never a header on the plan, which stock
        ``trtexec --loadEngine`` must still load."""
        set_metadata(path, model_file_entries(entries))
        target = json.loads(entries["efexport.target"])
        sidecar = {
            "schema": SIDECAR_SCHEMA,
            "engine": target["engine"],
            "build_options": target["build_options"],
            "trtexec": target["trtexec"],
            "parity": {"prepared_onnx": json.loads(entries["efexport.parity"]),
                       "engine": json.loads(entries.get("efexport.runtime_parity", "{}")).get("tensorrt")},
            "latency": json.loads(entries["efexport.latency"]),
            "model": {key.removeprefix("efexport."): _maybe_json(value) for key, value in entries.items()
                      if key in ("efexport.model", "efexport.weights", "efexport.preprocessing", "efexport.inputs",
                                 "efexport.outputs", "efexport.versions")},
        }
        (path.parent / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")


def _maybe_json(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _recipe_toml(recipe: Recipe) -> str:
    """The recipe as used (flags applied), for the artifact: what build_engine.sh was made from."""
    lines = ["# The recipe this artifact was built with (efexport, flags applied)."]
    values = recipe.model_dump()
    top = {k: v for k, v in values.items() if not isinstance(v, dict) and v is not None}
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for section, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]", *_toml_table(table, section)]
    return "\n".join(lines) + "\n"


def _toml_table(table: dict, prefix: str) -> list[str]:
    lines, nested = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in nested:
        lines += ["", f"[{prefix}.{key}]", *_toml_table(value, f"{prefix}.{key}")]
    return lines
