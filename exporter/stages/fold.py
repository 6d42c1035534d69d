"""Fold stage: run the recipe's passes on a copy of the model, proving parity after each one."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from exporter.errors import ParityError
from exporter.passes import ALL_PASSES


@dataclass(frozen=True)
class PassRecord:
    name: str
    changed: bool
    rewrites: int
    stored_values_before: int  # parameters and float buffers
    stored_values_after: int
    max_abs_error: float  # against the unfolded model on the probe inputs


@dataclass
class FoldedModel:
    model: nn.Module
    records: list[PassRecord]

    def report(self) -> list[dict]:
        return [asdict(r) for r in self.records]


def count_stored_values(model: nn.Module) -> int:
    """Parameters and floating-point buffers: what a deployed model stores."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return sum(t.numel() for t in tensors)


@torch.no_grad()
def fold_model(model: nn.Module, pass_names: list[str], probe_inputs: np.ndarray, max_abs: float) -> FoldedModel:
    """Apply passes in order to a deep copy; a pass whose result drifts past ``max_abs`` stops the pipeline."""
    probe = torch.from_numpy(probe_inputs)
    expected = model.eval()(probe)
    folded = copy.deepcopy(model).eval()
    records = []
    for name in pass_names:
        before = count_stored_values(folded)
        result = ALL_PASSES[name]()(folded)
        error = float((folded(probe) - expected).abs().max())
        records.append(PassRecord(name, result.changed, result.rewrites, before, count_stored_values(folded), error))
        if not error <= max_abs:
            raise ParityError(f"fold pass {name} broke parity: max abs error {error:.3g} > {max_abs:.3g}")
    return FoldedModel(folded, records)
