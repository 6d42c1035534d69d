"""Capture stage: the folded model captured once, with ``torch.export``, as the graph every target converts.

The capture is an ``ExportedProgram`` (ATen graph, weights lifted, the batch axis symbolic when the recipe asks
for a dynamic batch), checked against the eager model it was made from. Targets convert from it: ONNX at opset
18 and above through the dynamo exporter, Core ML through coremltools' ExportedProgram frontend (and Core AI,
which accepts nothing else). A TorchScript trace is made only when a target still needs one, and only then:
``torch.onnx.export(dynamo=False)`` is the one exporter that writes ONNX below opset 18 (the dynamo exporter
emits opset 18 at least and, asked for 17, returns opset 18 unconverted). That trace is of the captured
program's module, not of the eager model: one capture feeds every target (the ONNX graph it gives is node for
node and constant for constant the one a trace of the eager model gives, measured on l1 at opset 17, static and
dynamic batch). The manifest records which of the two the exported file was converted from (``describe``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.export import ExportedProgram

EXPORT = "torch.export"
TRACE = "torch.jit.trace"

# Why a tolerance at all: the captured program runs the same ATen kernels on the same shapes as the eager model,
# and on torch 2.13 the outputs are bit-identical (max abs 0.0, l1/l3/l7). A later PyTorch may legitimately
# reorder a float32 reduction while capturing; 1e-6 of the logits' scale allows that and nothing a wrong graph
# could produce (a dropped op, a wrong constant or a specialised shape moves the logits by O(1e-2) or more).
RELATIVE_TOLERANCE = 1e-6


class CaptureError(RuntimeError):
    """The captured graph does not compute what the model it captured computes."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a named dynamic axis
    dtype: str

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class CapturedGraph:
    """The folded model as one ``ExportedProgram``, its example input (batch 1) and interface, and, once a
    target has asked for it, the TorchScript trace of that program."""

    program: ExportedProgram
    example: torch.Tensor
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_abs_vs_eager: float  # the program against the eager model on the example(s), measured at capture
    # not init fields: dataclasses.replace (a precision stage swapping the program) starts without a stale trace
    _trace: torch.jit.ScriptModule | None = field(default=None, init=False, repr=False)
    _trace_reason: str = field(default="", init=False, repr=False)

    @property
    def dynamic_batch(self) -> bool:
        return isinstance(self.inputs[0].shape[0], str)

    @property
    def method(self) -> str:
        """What the target's file was converted from: the ExportedProgram, or the trace made from it."""
        return TRACE if self._trace is not None else EXPORT

    @torch.no_grad()
    def traced(self, reason: str) -> torch.jit.ScriptModule:
        """The TorchScript trace of the captured program, made on the first call (tracing costs seconds and
        most targets never need it); ``reason`` says which target needs it and why, for the manifest."""
        if self._trace is None:
            module = self.program.module()
            with warnings.catch_warnings():
                # TracerWarning: shape checks become constants (intended); FutureWarning: tracing is deprecated
                warnings.simplefilter("ignore")
                trace = torch.jit.trace(module, self.example, check_trace=False)
            _check("the TorchScript trace of the captured program", trace(self.example), module(self.example))
            self._trace, self._trace_reason = trace, reason
        return self._trace

    def describe(self) -> dict[str, str]:
        """The manifest's ``capture`` block (its extra keys are strings, by the manifest schema)."""
        facts = {
            "method": self.method,
            "torch_version": torch.__version__,
            "exported_program": (f"torch.export.export (non-strict), batch "
                                 f"{'dynamic (torch.export.Dim)' if self.dynamic_batch else 'static 1'}; max abs "
                                 f"{self.max_abs_vs_eager:.3g} against the eager folded model"),
        }
        if self._trace is not None:
            facts["reason"] = self._trace_reason
        return facts


def _check(what: str, got: torch.Tensor, expected: torch.Tensor) -> float:
    drift = float((got - expected).abs().max())
    allowed = RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not drift <= allowed:  # written so that a NaN fails too
        raise CaptureError(f"{what} differs from the model it captured (max abs {drift:.3g} > {allowed:.3g})")
    return drift


@torch.no_grad()
def capture(model: nn.Module, image_size: int, num_classes: int, dynamic_batch: bool) -> CapturedGraph:
    """``torch.export`` of ``model`` (eval mode) for (N, 3, image_size, image_size) float32 images, N dynamic or 1,
    checked against the eager model on seeded inputs."""
    model = model.eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, image_size, image_size, generator=generator)
    if dynamic_batch:
        # torch.export specialises a dimension whose example size is 0 or 1, so a dynamic batch needs an example
        # of two images; the program is then checked at batch 2 and at batch 1 (the example kept for targets).
        pair = torch.cat([example, torch.randn(1, 3, image_size, image_size, generator=generator)])
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (pair,), dynamic_shapes=({0: batch},), strict=False)
        checks = (pair, example)
    else:
        program = torch.export.export(model, (example,), strict=False)
        checks = (example,)
    module = program.module()
    drift = max(_check(f"the captured program (batch {len(x)})", module(x), model(x)) for x in checks)
    axis: int | str = "batch" if dynamic_batch else 1
    return CapturedGraph(
        program=program, example=example, max_abs_vs_eager=drift,
        inputs=(TensorSpec("image", (axis, 3, image_size, image_size), "float32"),),
        outputs=(TensorSpec("logits", (axis, num_classes), "float32"),),
    )
