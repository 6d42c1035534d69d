"""The precision axis: every value a recipe's ``precision`` may take, and what each asks of the pipeline.

A float precision below fp32 (fp16, bf16) is applied by the target's converter or builder (Core ML's compute
precision, TensorRT's builder flags): the captured graph goes to the target as it is. A precision with a
``stage`` gets that stage between capture and export: it takes the captured graph and calibration inputs and
returns the graph to export (an integer precision's quantize stage: observers, calibration, Q/DQ pairs), so no
target needs a special case for it. A precision whose ``needs_calibration`` has no stage yet is refused by the
recipe check with the reason. Parity gates are per precision, in the recipe (``parity.tolerances.<name>``).
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


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float", 32),
    Precision("fp16", "float", 16),
    Precision("bf16", "float", 16),
    Precision("int8", "integer", 8, needs_calibration=True),  # its quantize stage is issue 18's
)}


def unavailable_reason(name: str) -> str | None:
    """Why recipes cannot use precision ``name`` yet (None when they can)."""
    precision = PRECISIONS[name]
    if precision.needs_calibration and precision.stage is None:
        reduced = [p.name for p in PRECISIONS.values() if p.kind == "float" and p.reduced]
        return (f"{name} needs calibration data or a quantized (QDQ) graph, which efexport does not make yet; use "
                f"{', '.join(reduced)} or fp32")
    return None
