"""Capture stage: trace the folded model into a TorchScript graph for a fixed input signature."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a named dynamic axis
    dtype: str

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class CapturedGraph:
    module: torch.jit.ScriptModule
    example: torch.Tensor
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@torch.no_grad()
def capture(model: nn.Module, image_size: int, num_classes: int, dynamic_batch: bool) -> CapturedGraph:
    example = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    drift = float((traced(example) - model(example)).abs().max())
    if drift > 0:
        raise RuntimeError(f"traced graph differs from the model it traced (max abs {drift:.3g})")
    batch: int | str = "batch" if dynamic_batch else 1
    return CapturedGraph(
        module=traced, example=example,
        inputs=(TensorSpec("image", (batch, 3, image_size, image_size), "float32"),),
        outputs=(TensorSpec("logits", (batch, num_classes), "float32"),),
    )
