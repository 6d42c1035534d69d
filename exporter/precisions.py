"""The precision axis: every value a recipe's ``precision`` may take, and what each asks of the pipeline.

A float precision below fp32 (fp16, bf16) is applied by the target's converter or builder (Core ML's compute
precision, TensorRT's builder flags): the captured graph goes to the target as it is. A precision with a
``stage`` gets that stage between capture and export: it takes the captured graph and returns the graph to
export. A precision that ``needs_calibration`` (int8) is calibrated on real inputs (``exporter.calibration``) and
made by the target's own quantizer after export (``Target.quantizer``: ONNX Runtime's Q/DQ quantization for the
ONNX-based targets), chosen group by group by the quantize stage (``exporter.stages.quantize``); a target
offers it by listing it in its spec's precisions. Parity gates are per precision, in the recipe
(``parity.tolerances.<name>``); an integer precision is gated on held-out inputs it was not calibrated on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Precision:
    name: str  # the recipe's and the package folder's spelling: fp32, fp16, bf16, int8
    kind: Literal["float", "integer"]
    bits: int
    needs_calibration: bool = False  # activation ranges must be measured on calibration inputs
    stage: str | None = None  # "module:function" acting on the captured graph before export, if any
    # fold passes that defeat this precision, and why: a recipe listing one is refused; `--precision` on the
    # command line leaves them out of the recipe's list instead (the fold stage's line shows what ran)
    refused_passes: tuple[tuple[str, str], ...] = ()

    @property
    def reduced(self) -> bool:
        """Lower than float32: its parity is gated by cosine and top-1 agreement, its max abs only reported."""
        return self.bits < 32

    def load_stage(self) -> Callable[..., Any] | None:
        """The stage function ``(captured, recipe, calibration) -> captured``, or None when there is none."""
        if self.stage is None:
            return None
        module, _, name = self.stage.partition(":")
        return getattr(importlib.import_module(module), name)


_CARRY_FP16 = ("carry-mixer-scale", "it scales activations up to 16x, towards float16's overflow")
# measured on l1 (photographs, every group quantized): min cosine 0.55 with the pass, 0.91 without
_CARRY_INT8 = ("carry-mixer-scale", "it stores residual-stream channels up to 16x apart in scale, so one int8 "
                                    "scale per tensor leaves the scaled-down channels up to 4 bits")

PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float", 32),
    Precision("fp16", "float", 16, refused_passes=(_CARRY_FP16,)),
    Precision("bf16", "float", 16),
    # quantized after export by the target's quantizer (Target.quantizer), calibrated by exporter.calibration
    Precision("int8", "integer", 8, needs_calibration=True, refused_passes=(_CARRY_INT8,)),
)}


def passes_for(precision: str, passes: list[str]) -> list[str]:
    """``passes`` without those ``precision`` refuses."""
    refused = {name for name, _ in PRECISIONS[precision].refused_passes}
    return [name for name in passes if name not in refused]
