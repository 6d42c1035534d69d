"""The TensorRT 10 Python API: build an engine from the prepared ONNX, and run and time it.

The only module in the project that imports ``tensorrt``, and only inside functions (torch too), so importing
this module never fails and touches no GPU. Everything the build consumes is plain data from
``exporter.targets.tensorrt_options``; GPU timing and its reports live in ``validate.gpu_timing``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from efexport.exporter.targets.tensorrt.options import BuildOptions

if TYPE_CHECKING:
    import torch


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built and run here: ``import tensorrt`` works AND torch sees a CUDA device.
    Otherwise one sentence saying what is missing."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the tensorrt Python package is not installed")
    except Exception as error:  # e.g. OSError: the package is there but its libnvinfer is not
        missing.append(f"the tensorrt Python package cannot be imported ({type(error).__name__}: {error})")
    import torch

    if not torch.cuda.is_available():
        missing.append("no CUDA device is visible")
    return " and ".join(missing) or None


@cache
def _logger():
    """One process-wide logger (TensorRT objects keep a reference to it): prints warnings and errors to stderr
    and keeps the errors, so a failed build can say why in its exception."""
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                            trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {severity.name}: {msg}", file=sys.stderr)

    logger = Logger()
    trt.init_libnvinfer_plugins(logger, "")
    return logger


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool = False):
    """The network of ``onnx_path``; a parser error raises RuntimeError naming the failing ONNX node(s).
    ``strongly_typed``: every tensor's type comes from the graph (its Q/DQ pairs), none from builder flags."""
    # TensorRT 10: explicit batch is the only mode; STRONGLY_TYPED for explicit (Q/DQ) quantization
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _logger())
    # path: lets the parser find weights stored next to the model (external data)
    if not parser.parse(onnx_path.read_bytes(), path=str(onnx_path)):
        nodes = onnx.load(onnx_path, load_external_data=False).graph.node
        described = []
        for error in (parser.get_error(i) for i in range(parser.num_errors)):
            index = error.node()  # the failing node's index in the graph, -1 when no node is to blame
            where = f"node {index} {nodes[index].name!r} ({nodes[index].op_type}): " if 0 <= index < len(nodes) else ""
            described.append(where + error.desc())
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: "
                           + ("; ".join(described) or "no error recorded"))
    return network, parser  # the parser must outlive the network's use (it owns the weights it imported)


def _check_input(network, options: BuildOptions) -> None:
    """The ONNX input must be the one the options describe, dynamic in batch exactly when they give a profile."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [options.input_name]:
        raise ValueError(f"the ONNX inputs {[t.name for t in inputs]} are not [{options.input_name!r}] of the "
                         "build options: the ONNX and the options disagree")
    dynamic = inputs[0].shape[0] == -1
    if dynamic != (options.profile is not None):
        raise ValueError(f"the ONNX input has {'a dynamic' if dynamic else 'a static'} batch but the build options "
                         f"{'give no' if dynamic else 'give an'} optimization profile: the ONNX and options disagree")


def _pin_fp32(trt, network, names: tuple[str, ...]) -> int:
    """Pin the named layers (precision and float outputs) to FP32; every name must be a layer of the network."""
    wanted, pinned = set(names), 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in wanted:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            # only floating outputs: forcing an index or shape output to float32 would change what it means
            if layer.get_output(j).dtype in (trt.float32, trt.float16, trt.bfloat16):
                layer.set_output_type(j, trt.float32)
        wanted.discard(layer.name)
        pinned += 1
    if wanted:
        raise ValueError(f"{len(wanted)} layer(s) to pin to FP32 are not in the network: {sorted(wanted)[:5]}: the "
                         "ONNX and the build options disagree")
    return pinned


def build_engine(onnx_path: Path, plan_path: Path, options: BuildOptions, timing_cache_path: Path) -> dict:
    """Build the engine of ``options`` from ``onnx_path``; write it to ``plan_path`` and the timing cache to
    ``timing_cache_path`` (loaded first if it exists). Returns the facts of the build.

    Rules: the same options as ``trtexec_command`` (workspace, optimisation level, profile, reduced precision with
    the pinned layers obeyed, hardware and version compatibility), plus TF32 off, so "fp32" is IEEE FP32 and the
    pinned layers are really FP32. The timing cache must match this GPU and TensorRT (no ``ignore_mismatch``).
    """
    import tensorrt as trt
    import torch

    from efexport.validate.gpu_timing import gpu_fingerprint

    logger = _logger()
    logger.errors.clear()
    builder = trt.Builder(logger)
    strongly_typed = options.precision == "int8"  # the ONNX carries Q/DQ pairs: explicit quantization
    network, _parser = _parse(trt, builder, onnx_path, strongly_typed)
    _check_input(network, options)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    config.clear_flag(trt.BuilderFlag.TF32)  # on by default: TF32 math (10-bit mantissa) is not FP32 parity
    pinned = 0
    if options.precision not in ("fp32", "int8"):  # int8: strongly typed, no precision flags
        flags = {"fp16": trt.BuilderFlag.FP16, "bf16": trt.BuilderFlag.BF16}
        if options.precision not in flags:
            raise ValueError(f"unknown precision {options.precision!r}; expected fp32, {', '.join(flags)}")
        config.set_flag(flags[options.precision])
        if options.fp32_layers:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # a pin is a rule, not a preference
            pinned = _pin_fp32(trt, network, options.fp32_layers)
    if options.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif options.hardware_compatibility != "none":
        raise ValueError(f"unknown hardware compatibility {options.hardware_compatibility!r}")
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.profile is not None:
        p, size, profile = options.profile, options.image_size, builder.create_optimization_profile()
        profile.set_shape(options.input_name, p.shape(p.min, size), p.shape(p.opt, size), p.shape(p.max, size))
        config.add_optimization_profile(profile)

    cache_loaded = timing_cache_path.exists()
    timing_cache = config.create_timing_cache(timing_cache_path.read_bytes() if cache_loaded else b"")
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        raise RuntimeError(f"{timing_cache_path} is a timing cache from another GPU or TensorRT version: delete it")

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine: " + ("; ".join(logger.errors) or "see its log"))
    plan_path.write_bytes(memoryview(serialized))
    timing_cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))

    gpu = gpu_fingerprint()
    return {
        "tensorrt": trt.__version__,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "cuda_runtime": torch.version.cuda,
        "driver": gpu["driver"],
        "build_seconds": round(seconds, 2),
        "network_layers": network.num_layers,
        "layers_pinned_fp32": pinned,
        "tf32": False,
        "timing_cache_loaded": cache_loaded,
        "plan_bytes": plan_path.stat().st_size,
    }


@dataclass
class _Buffers:
    """Pinned host staging and device tensors for one batch size (pinned: asynchronous copies, as deployed)."""

    host_in: torch.Tensor
    device_in: torch.Tensor
    device_out: torch.Tensor
    host_out: torch.Tensor


class EngineRunner:
    """A TensorRT engine (a ``model.plan``) running float32 stacks (K, 3, H, W) -> (K, num_classes) on the current
    CUDA device, in batches no larger than the profile's max (or the static batch), with torch CUDA tensors as the
    I/O buffers. A static engine's short last batch is zero-padded and the padding's outputs dropped."""

    backend = "tensorrt"
    threads = None  # the GPU schedules its own work
    is_deployment_runtime = True

    def __init__(self, plan_path: Path, precision: str | None = None, host_code_allowed: bool = False) -> None:
        """``precision``: the build's (for the pipeline's parity tolerances). ``host_code_allowed``: needed to load
        a version-compatible plan, which embeds the runtime it runs with; only for plans one trusts."""
        import tensorrt as trt
        import torch

        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)  # also initializes CUDA before TensorRT touches it
        self.runtime = trt.Runtime(_logger())
        self.runtime.engine_host_code_allowed = host_code_allowed
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan_path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"{plan_path}: expected one input and one output, found {inputs} and {outputs}")
        (self.input_name,), (self.output_name,) = inputs, outputs
        for name in names:
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise RuntimeError(f"{plan_path}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, not float32")
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.image_shape = shape[1:]
        if shape[0] == -1:  # dynamic batch: the first profile's range
            _min, _opt, largest = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.static_batch, self.max_batch = None, largest[0]
        else:
            self.static_batch = self.max_batch = shape[0]
        self.precision = precision
        self.runtime_version = trt.__version__
        self._buffers: dict[int, _Buffers] = {}
        self._bound: int | None = None  # the batch size whose shape and addresses the context holds

    def _bind(self, batch: int) -> _Buffers:
        """Buffers for ``batch`` images, with the context's input shape and tensor addresses set to them."""
        import torch

        if not 1 <= batch <= self.max_batch or (self.static_batch is not None and batch != self.static_batch):
            raise ValueError(f"batch {batch} is outside the engine's batch range (max {self.max_batch}, "
                             f"static {self.static_batch})")
        if batch not in self._buffers:
            if not self.context.set_input_shape(self.input_name, (batch, *self.image_shape)):
                raise RuntimeError(f"the engine refused input shape {(batch, *self.image_shape)}")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            with torch.cuda.stream(self.stream):  # allocated for the stream that uses them
                self._buffers[batch] = _Buffers(
                    host_in=torch.empty((batch, *self.image_shape), dtype=torch.float32, pin_memory=True),
                    device_in=torch.empty((batch, *self.image_shape), dtype=torch.float32, device=self.device),
                    device_out=torch.empty(out_shape, dtype=torch.float32, device=self.device),
                    host_out=torch.empty(out_shape, dtype=torch.float32, pin_memory=True))
            self._bound = None
        buffers = self._buffers[batch]
        if self._bound != batch:
            if not self.context.set_input_shape(self.input_name, (batch, *self.image_shape)):
                raise RuntimeError(f"the engine refused input shape {(batch, *self.image_shape)}")
            self.context.set_tensor_address(self.input_name, buffers.device_in.data_ptr())
            self.context.set_tensor_address(self.output_name, buffers.device_out.data_ptr())
            self._bound = batch
        return buffers

    def _execute(self) -> None:
        """Enqueue one inference of the bound batch on the runner's stream."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT failed to enqueue the inference")

    def _round_trip(self, buffers: _Buffers) -> None:
        """Host input -> device, inference, device -> host output, and wait for it: one whole request."""
        import torch

        with torch.cuda.stream(self.stream):
            buffers.device_in.copy_(buffers.host_in, non_blocking=True)
            self._execute()
            buffers.host_out.copy_(buffers.device_out, non_blocking=True)
        self.stream.synchronize()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        step = self.static_batch or self.max_batch
        outputs = []
        for i in range(0, len(inputs), step):
            chunk = np.ascontiguousarray(inputs[i:i + step], dtype=np.float32)
            buffers = self._bind(self.static_batch or len(chunk))
            buffers.host_in[:len(chunk)].copy_(torch.from_numpy(chunk))
            buffers.host_in[len(chunk):].zero_()  # a static engine's padding
            self._round_trip(buffers)
            outputs.append(buffers.host_out[:len(chunk)].numpy().copy())
        return np.concatenate(outputs)

    def time_batch(self, batch_size: int, warmup: int, runs: int) -> tuple[list[float], list[float]]:
        """(GPU compute ms, host end-to-end ms) of ``runs`` inferences of ``batch_size`` images after ``warmup``
        untimed ones each: CUDA events around the enqueued inference alone, and wall time of a whole request
        (pinned host -> device copy, inference, device -> host copy, synchronized)."""
        import torch

        from efexport.validate.gpu_timing import cuda_event_times, host_times_synchronized

        buffers = self._bind(batch_size)
        generator = torch.Generator().manual_seed(0)  # realistic values: some kernels' speed depends on them
        buffers.host_in.copy_(torch.randn(buffers.host_in.shape, generator=generator))
        with torch.cuda.stream(self.stream):
            buffers.device_in.copy_(buffers.host_in, non_blocking=True)
        device_ms = cuda_event_times(self._execute, warmup, runs, stream=self.stream)
        host_ms = host_times_synchronized(lambda: self._round_trip(buffers), warmup, runs)
        return device_ms, host_ms
