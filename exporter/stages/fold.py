"""Fold stage: run the recipe's passes on a copy of the model, proving parity after each one.

After every pass the folded model (float32) is compared with the unfolded model evaluated exactly (float64)
on the probe inputs. The unfolded model's own float32 error against that same exact result is the float32
noise floor: what float32 arithmetic alone does on these weights. A pass fails when its error exceeds both
the recipe's ``fold.max_abs`` and twice that floor, so a checkpoint whose weights amplify rounding is not
refused for rounding the unfolded model shows too, while any real change of the function is.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from efexport.exporter.errors import ParityError
from efexport.exporter.passes import ALL_PASSES


@dataclass(frozen=True)
class PassRecord:
    name: str
    changed: bool
    rewrites: int
    stored_values_before: int  # parameters and float buffers
    stored_values_after: int
    ops_before: int  # aten ops in the traced graph
    ops_after: int
    max_abs_error: float  # float32 folded model against the unfolded model in float64, on the probe inputs


@dataclass
class FoldedModel:
    model: nn.Module
    records: list[PassRecord]
    float32_noise_floor: float
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]

    allowed: float = 0.0  # the gate each pass met: max(fold.max_abs, 2 x float32_noise_floor)

    def report(self) -> dict:
        return {"passes": [asdict(r) for r in self.records], "float32_noise_floor": self.float32_noise_floor,
                "max_abs_gate": self.allowed, "op_counts_before": self.op_counts_before,
                "op_counts_after": self.op_counts_after}


def count_stored_values(model: nn.Module) -> int:
    """Parameters and floating-point buffers: what a deployed model stores."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return sum(t.numel() for t in tensors)


def traced_run(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """The model's outputs for ``inputs`` and the aten op kinds and counts of its TorchScript trace, from one
    forward pass (tracing runs the model: its outputs are the real ones).

    The model is traced as a function (parameters become constants), not as a module: the same ops (checked on
    l1 and l7 after every pass of both pass lists) at a third of the cost, since no script module is built per
    submodule. Tracing a function needs parameters that do not require grad, so that flag is lifted meanwhile.
    """
    slots = [(module, "_parameters", name, tensor) for module in model.modules()
             for name, tensor in module._parameters.items() if tensor is not None]
    slots += [(module, "_buffers", name, tensor) for module in model.modules()
              for name, tensor in module._buffers.items() if tensor is not None]
    outputs: list[torch.Tensor] = []

    def forward(batch: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        for (module, kind, name, _), tensor in zip(slots, tensors, strict=True):
            getattr(module, kind)[name] = tensor
        try:
            outputs.append(model(batch))
        finally:
            for module, kind, name, original in slots:
                getattr(module, kind)[name] = original
        return outputs[-1]

    # The weights enter the trace as inputs, not as constants: a traced graph's constants stay alive in torch's
    # C++ state after the trace is gone (a copy of the model per trace, gigabytes over a fold of l7).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.jit.trace(forward, (inputs, *(slot[3].detach() for slot in slots)),
                                check_trace=False).inlined_graph
    counts = Counter(node.kind().removeprefix("aten::") for node in graph.nodes() if node.kind().startswith("aten::"))
    return outputs[0].detach(), dict(sorted(counts.items()))


def traced_op_counts(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """aten op kinds and counts of the model's TorchScript trace for ``example``."""
    return traced_run(model, example)[1]


def exact_outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model evaluated exactly, in float64 (eval mode), on ``inputs``: its floating-point weights converted
    and swapped in for the call, so the module itself is neither copied nor changed (a deep copy before
    ``.double()`` gave the same outputs, bit for bit, for a copy of every weight more)."""
    if model.training:  # the exact reference is the model in eval mode; a training-mode model is copied to get it
        model = copy.deepcopy(model).eval()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    state = {name: tensor.double() if tensor.is_floating_point() else tensor for name, tensor in tensors}
    return torch.func.functional_call(model, state, (inputs.double(),))


def fold_probe(inputs: np.ndarray, kinds: tuple[str, ...]) -> np.ndarray:
    """The first reference input of each kind (noise, image): what every fold pass is checked on."""
    return inputs[[kinds.index(kind) for kind in dict.fromkeys(kinds)]]


@torch.no_grad()
def fold_model(model: nn.Module, pass_names: list[str], probe_inputs: np.ndarray, max_abs: float) -> FoldedModel:
    """Apply passes in order to a deep copy; a pass whose result drifts past the gate stops the pipeline."""
    probe = torch.from_numpy(probe_inputs)
    exact = exact_outputs(model, probe)
    folded = copy.deepcopy(model).eval()
    unfolded, initial_ops = traced_run(folded, probe)  # one forward gives the outputs and the op counts
    noise_floor = float((unfolded.double() - exact).abs().max())
    allowed = max(max_abs, 2 * noise_floor)
    ops = initial_ops
    records = []
    for name in pass_names:
        before, ops_before = count_stored_values(folded), sum(ops.values())
        result = ALL_PASSES[name]()(folded)
        if result.changed:
            outputs, ops = traced_run(folded, probe)
        else:
            outputs = folded(probe)
        error = float((outputs.double() - exact).abs().max())
        records.append(PassRecord(name, result.changed, result.rewrites, before, count_stored_values(folded),
                                  ops_before, sum(ops.values()), error))
        if not error <= allowed:
            raise ParityError(f"fold pass {name} broke parity: max abs error {error:.3g} > {allowed:.3g} (fold.max_abs "
                              f"{max_abs:.3g}; the unfolded model's own float32 error is {noise_floor:.3g})")
    return FoldedModel(folded, records, noise_floor, initial_ops, ops, allowed)
