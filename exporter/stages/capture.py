"""Capture stage: the folded model's graph, captured once with ``torch.export``, as every target converts it.

The capture is an ``ExportedProgram`` (ATen graph, weights lifted, the batch axis symbolic when the recipe asks
for a dynamic batch), checked against the eager model it was made from. Targets convert from it: ONNX at opset
18 and above through the dynamo exporter, Core ML through coremltools' ExportedProgram frontend (and Core AI,
which accepts nothing else), and a precision stage (quantization) rewrites it.

The program is made when the first of them asks for it (``CapturedGraph.program``), not before: one target
does not want it. ONNX below opset 18 (the shipped recipe's 17) is written by ``torch.onnx.export(dynamo=False)``
alone, which converts a TorchScript trace (the dynamo exporter emits opset 18 at least and, asked for 17,
returns opset 18 unconverted). Tracing the captured program's module gives that exporter node for node and
constant for constant the graph a trace of the eager folded model gives (measured on l1/l3/l7 at opset 17,
static and dynamic batch: 162/298/456 nodes), and making the program first costs ``torch.export``'s seconds
(2.3 s of l1's 3.6 s capture stage on this 2-core machine) for nothing. So a trace is of the eager folded model
unless a program exists (a precision stage replaced it, or a target made it): then it is of that program,
which is what the later stages were given. The manifest records which of the two the exported file was
converted from and, for a trace, why and of what (``describe``).
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
    """The folded model, its example input (batch 1) and interface; its ``ExportedProgram`` once asked for (or
    as a precision stage replaced it), and its TorchScript trace once a target asked for one."""

    model: nn.Module  # the eager folded model, in eval mode
    example: torch.Tensor
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _program: ExportedProgram | None = field(default=None, repr=False)
    _program_drift: float | None = field(default=None, repr=False)  # max abs vs the eager model, when made here
    _trace: torch.jit.ScriptModule | None = field(default=None, init=False, repr=False)
    _trace_of: str = field(default="", init=False, repr=False)
    _trace_reason: str = field(default="", init=False, repr=False)
    _trace_drift: float = field(default=0.0, init=False, repr=False)

    @property
    def dynamic_batch(self) -> bool:
        return isinstance(self.inputs[0].shape[0], str)

    @property
    def program(self) -> ExportedProgram:
        """The ``torch.export`` capture, made (and checked against the eager model) on the first call."""
        if self._program is None:
            self._program, self._program_drift = _export(self.model, self.example, self.dynamic_batch)
        return self._program

    @property
    def max_abs_vs_eager(self) -> float | None:
        """The program against the eager model, measured when it was made (None for a stage's rewrite)."""
        _ = self.program
        return self._program_drift

    def with_program(self, program: ExportedProgram) -> CapturedGraph:
        """The same interface with ``program`` as its capture (a precision stage's rewrite): targets convert the
        new program, and a trace, if one is asked for, is made of it (never of the model it replaced)."""
        return CapturedGraph(self.model, self.example, self.inputs, self.outputs, _program=program)

    @property
    def method(self) -> str:
        """What the target's file was converted from: the ExportedProgram, or a trace."""
        return TRACE if self._trace is not None else EXPORT

    @torch.no_grad()
    def traced(self, reason: str) -> torch.jit.ScriptModule:
        """The TorchScript trace, made on the first call: of the program when one exists, else of the eager
        folded model (the same graph, without torch.export's cost); ``reason`` says which target needs it and
        why, for the manifest."""
        if self._trace is None:
            if self._program is not None:
                source, what = self._program.module(), "the captured program"
            else:
                source, what = self.model, "the eager folded model"
            with warnings.catch_warnings():
                # TracerWarning: shape checks become constants (intended); FutureWarning: tracing is deprecated
                warnings.simplefilter("ignore")
                trace = torch.jit.trace(source, self.example, check_trace=False)
            drift = _check(f"the TorchScript trace of {what}", trace(self.example), source(self.example))
            if self.dynamic_batch:  # the trace must not have baked batch 1 in: check batch 2 as well
                pair = torch.cat([self.example, self.example.flip(-1)])
                drift = max(drift, _check(f"the TorchScript trace of {what} (batch 2)", trace(pair), source(pair)))
            self._trace, self._trace_of, self._trace_reason, self._trace_drift = trace, what, reason, drift
        return self._trace

    def describe(self) -> dict[str, str]:
        """The manifest's ``capture`` block (its extra keys are strings, by the manifest schema)."""
        facts = {"method": self.method, "torch_version": torch.__version__}
        batch = "dynamic" if self.dynamic_batch else "static 1"
        if self._program is not None:
            checked = (f"max abs {self._program_drift:.3g} against the eager folded model"
                       if self._program_drift is not None else "a stage's rewrite of the capture")
            facts["exported_program"] = (f"torch.export.export (non-strict), batch "
                                         f"{'dynamic (torch.export.Dim)' if self.dynamic_batch else 'static 1'}; "
                                         f"{checked}")
        if self._trace is not None:
            facts["trace"] = (f"torch.jit.trace of {self._trace_of}, batch {batch}; max abs "
                              f"{self._trace_drift:.3g} against it")
            facts["reason"] = self._trace_reason
        return facts


def _check(what: str, got: torch.Tensor, expected: torch.Tensor) -> float:
    drift = float((got - expected).abs().max())
    allowed = RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not drift <= allowed:  # written so that a NaN fails too
        raise CaptureError(f"{what} differs from the model it captured (max abs {drift:.3g} > {allowed:.3g})")
    return drift


@torch.no_grad()
def _export(model: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> tuple[ExportedProgram, float]:
    """``torch.export`` of ``model`` at the example's shape (the batch dynamic or 1), checked against it."""
    if dynamic_batch:
        # torch.export specialises a dimension whose example size is 0 or 1, so a dynamic batch needs an example
        # of two images; the program is then checked at batch 2 and at batch 1 (the example kept for targets).
        other = torch.randn(example.shape, generator=torch.Generator().manual_seed(1))
        pair = torch.cat([example, other])
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (pair,), dynamic_shapes=({0: batch},), strict=False)
        checks = (pair, example)
    else:
        program = torch.export.export(model, (example,), strict=False)
        checks = (example,)
    module = program.module()
    drift = max(_check(f"the captured program (batch {len(x)})", module(x), model(x)) for x in checks)
    return program, drift


def capture(model: nn.Module, image_size: int, num_classes: int, dynamic_batch: bool) -> CapturedGraph:
    """The capture of ``model`` (eval mode) for (N, 3, image_size, image_size) float32 images, N dynamic or 1:
    its ``program`` is made when a target or stage first asks for it."""
    example = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    axis: int | str = "batch" if dynamic_batch else 1
    return CapturedGraph(
        model=model.eval(), example=example,
        inputs=(TensorSpec("image", (axis, 3, image_size, image_size), "float32"),),
        outputs=(TensorSpec("logits", (axis, num_classes), "float32"),),
    )
