"""Rewrite exclude-pad average pooling as include-pad pooling times a per-position correction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from efexport.exporter.passes.base import ModelPass, PassResult


class CorrectedAvgPool(nn.Module):
    """``AvgPool2d(..., count_include_pad=False)`` computed as include-pad pooling times ``1 / coverage``.

    ``coverage`` is the include-pad pooling of a map of ones: at each output position, the fraction of its
    window that lies inside the input (for a 3x3 window with padding 1: 4/9 in a corner, 6/9 on an edge, 1
    inside). Dividing it out turns the include-pad mean (sum / window size) into the exclude-pad one
    (sum / in-input count), exactly up to float rounding. The coverage is computed in the graph from the
    input's static height and width, so the module holds no size (V1 takes 193 to 224 pixels) and converters
    fold it to a constant.
    """

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding

    def _include_pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coverage = self._include_pad(x.new_ones((1, 1, *x.shape[-2:])))
        return self._include_pad(x) * coverage.reciprocal()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class IncludePadPooling(ModelPass):
    """Every ``nn.AvgPool2d`` that excludes padding from its mean becomes a ``CorrectedAvgPool``.

    Why: Apple's Core AI runtime (coreai-core 1.0.0b3, converted by coreai-torch 0.4.3) computes
    ``AvgPool2d(3, 1, 1, count_include_pad=False)`` as if the padding counted (max abs error 0.63 on one
    layer), and that pooling is EfficientFormer V1's token mixer; include-pad pooling it computes correctly.
    ``tests/test_coreai_runtime.py`` runs the bare layer on the runtime, so we notice when Apple fixes it.

    Before::                                     After::

        x --> AvgPool(3, 1, 1, exclude pad)         x --> AvgPool(3, 1, 1, include pad) --> Mul --> y
                                                    ones(1, 1, H, W) --> AvgPool(include pad) --> Reciprocal --^
                                                    (a constant subgraph: H and W are static)

    Requires ``ceil_mode=False`` and no ``divisor_override``: with either, PyTorch's divisor is not the window
    size and the correction would not be exact, so such a pooling is refused by name rather than left alone.
    """

    name = "include-pad-pooling"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
                   if isinstance(child, nn.AvgPool2d) and not child.count_include_pad]
        for parent, name, pool in targets:
            if pool.ceil_mode or pool.divisor_override is not None:
                raise ValueError(f"include-pad-pooling: {name} ({pool}) uses ceil_mode or divisor_override, whose "
                                 f"divisor is not the window size: no exact include-pad form")
            setattr(parent, name, CorrectedAvgPool(pool))
        return PassResult(changed=bool(targets), rewrites=len(targets))
