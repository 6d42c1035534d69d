"""GELU in the fewest ONNX nodes an opset without a Gelu op allows, with its constants folded away."""

from __future__ import annotations

import math

import torch
from torch import nn

from efexport.exporter.models.efficientformer import ConvMlp, LinearMlp
from efexport.exporter.passes.base import ModelPass, PassResult
from efexport.exporter.passes.fold_layer_scale import scale_output_channels


class ErfGelu(nn.Module):
    """``u + u * erf(u)``: GELU of ``x = sqrt(2) u``, divided by ``sqrt(2)``."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + u * torch.erf(u)


class ErfGeluForm(ModelPass):
    """``fc2(gelu(fc1 x))`` with ``gelu(x) = 0.5 x (1 + erf(x / sqrt 2))`` becomes ``fc2'(u + u erf(u))``
    with ``u = fc1'(x) = fc1(x) / sqrt 2`` and ``fc2' = fc2 / sqrt 2``.

    Before (opset < 20)::                          After::

        fc1 -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> [Mul 0.5] -> fc2     fc1' -> Erf -> Mul(u) -> Add(u) -> fc2'

    One node fewer per GELU (two where the 0.5 is not folded by the simplifier), and no Div. ONNX Runtime
    does not fuse the MB4D GELUs of a plain export (measured), so this is also fewer kernels. For ONNX
    at opset < 20 only: from opset 20 ONNX has a Gelu op (one node), and Core ML has a gelu op.
    """

    name = "erf-gelu"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        inv_sqrt2 = torch.tensor(1.0 / math.sqrt(2.0))
        rewritten = 0
        for mlp in model.modules():
            if not isinstance(mlp, ConvMlp | LinearMlp) or not isinstance(mlp.act, nn.GELU):
                continue
            if mlp.act.approximate != "none":
                continue
            before_act = mlp.norm1 if isinstance(mlp, ConvMlp) and isinstance(mlp.norm1, nn.BatchNorm2d) else mlp.fc1
            scale_output_channels(before_act, inv_sqrt2.expand(before_act.weight.shape[0]))
            mlp.fc2.weight.copy_((mlp.fc2.weight.double() * inv_sqrt2.double()).to(mlp.fc2.weight.dtype))
            mlp.act = ErfGelu()
            rewritten += 1
        return PassResult(changed=rewritten > 0, rewrites=rewritten)
