"""What a TensorRT engine build needs, as plain data computed from the recipe and the prepared ONNX graph.

Both consumers read only this: ``trtexec_command`` (the reproducible ``build_engine.sh`` in every artifact) and
``exporter.targets.tensorrt_api`` (the TensorRT Python API build, where TensorRT and a GPU exist). Nothing here
imports TensorRT, so all of it is tested on any machine.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass

import onnx

PLAN_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"


@dataclass(frozen=True)
class Profile:
    """Batch sizes of one optimization profile of the (batch, 3, size, size) input."""

    min: int
    opt: int
    max: int

    def shape(self, batch: int, image_size: int) -> tuple[int, int, int, int]:
        return (batch, 3, image_size, image_size)


@dataclass(frozen=True)
class BuildOptions:
    input_name: str
    image_size: int
    precision: str  # "fp32" | "fp16" | "bf16" | "int8"
    profile: Profile | None  # None: the ONNX has a static batch of 1
    fp32_layers: tuple[str, ...]  # TensorRT layer names (= ONNX node names) pinned to FP32 in reduced precision
    workspace_mib: int
    optimization_level: int  # builder optimisation level 0..5
    timing_cache: str  # file name inside the artifact, loaded if present and saved after the build
    hardware_compatibility: str  # "none" | "ampere_plus"
    version_compatible: bool

    def to_dict(self) -> dict:
        return asdict(self)


def nodes_pinned_to_fp32(model: onnx.ModelProto, op_types: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the graph's nodes of the given op types, in graph order: the layers a reduced-precision build
    keeps in FP32 (TensorRT's ONNX parser names each layer after the node it comes from)."""
    return tuple(node.name for node in model.graph.node if node.op_type in op_types)


def _shape_flag(name: str, shape: tuple[int, ...]) -> str:
    return f"{name}:{'x'.join(map(str, shape))}"


def trtexec_command(options: BuildOptions, onnx_file: str, plan_file: str = PLAN_FILE) -> list[str]:
    """``trtexec`` arguments equivalent to the API build with ``options`` (files relative to the artifact)."""
    args = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={plan_file}",
            f"--memPoolSize=workspace:{options.workspace_mib}",  # MiB
            f"--builderOptimizationLevel={options.optimization_level}",
            f"--timingCacheFile={options.timing_cache}",
            "--noTF32"]  # as the API build: TF32 is not FP32 and would miss the FP32 parity gate
    if options.profile is not None:
        p, name, size = options.profile, options.input_name, options.image_size
        args += [f"--minShapes={_shape_flag(name, p.shape(p.min, size))}",
                 f"--optShapes={_shape_flag(name, p.shape(p.opt, size))}",
                 f"--maxShapes={_shape_flag(name, p.shape(p.max, size))}"]
    if options.precision == "int8":
        # explicit quantization: the Q/DQ pairs in the ONNX decide every tensor's type (implicit INT8 calibration
        # is deprecated since TensorRT 10.1); a strongly typed network takes no precision flags or pins
        args.append("--stronglyTyped")
    elif options.precision != "fp32":
        args.append(f"--{options.precision}")
        if options.fp32_layers:
            pinned = ",".join(f"{layer}:fp32" for layer in options.fp32_layers)
            args += ["--precisionConstraints=obey", f"--layerPrecisions={pinned}", f"--layerOutputTypes={pinned}"]
    if options.hardware_compatibility == "ampere_plus":
        args.append("--hardwareCompatibilityLevel=ampere+")
    if options.version_compatible:
        args.append("--versionCompatible")
    return args


def build_script(options: BuildOptions, onnx_file: str) -> str:
    """``build_engine.sh``: rebuilds the engine on the user's GPU from the artifact alone, with stock trtexec."""
    command = " \\\n    ".join(shlex.quote(arg) for arg in trtexec_command(options, onnx_file))
    return f"""#!/usr/bin/env bash
# Rebuilds {PLAN_FILE} from {onnx_file} with the options efexport recorded in engine.json ("build_options").
# An engine is tied to the GPU architecture and TensorRT version that build it: run this on the serving GPU.
# Needs TensorRT's trtexec on PATH (TensorRT's bin/ directory or the NGC TensorRT container).
set -euo pipefail
cd "$(dirname "$0")"
command -v trtexec >/dev/null || {{ echo "trtexec not found: install TensorRT or use its container" >&2; exit 127; }}
{command}
sha256sum {PLAN_FILE}
"""
