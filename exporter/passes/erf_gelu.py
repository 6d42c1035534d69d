"""GELU in the fewest ONNX nodes an opset without a Gelu op allows, with its constants folded away."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from efexport.exporter.models.efficientformer import ConvMlp, LinearMlp
from efexport.exporter.passes.base import ModelPass, PassResult
from efexport.exporter.passes.fold_layer_scale import scale_output_channels


class ErfGelu(nn.Module):
    """``u + u * erf(u)``: GELU of ``x = sqrt(2) u``, divided by ``sqrt(2)``."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + u * torch.erf(u)


class _Site(NamedTuple):
    """A GELU between linear layers (the protocol EfficientFormerV2's modules declare with ``gelu_sites()``)."""

    owner: nn.Module
    act: str
    before: tuple[nn.Module, ...]  # output channels scaled by 1/sqrt 2 (weights and bias)
    offsets: tuple[torch.Tensor, ...]  # bias terms scaled with them (a layer that reads a scaled input)
    after: tuple[nn.Module, ...]  # input scaled by 1/sqrt 2 (weights only)


def _v1_site(mlp: nn.Module) -> _Site | None:
    if not isinstance(mlp, ConvMlp | LinearMlp):
        return None
    before_act = mlp.norm1 if isinstance(mlp, ConvMlp) and isinstance(mlp.norm1, nn.BatchNorm2d) else mlp.fc1
    return _Site(mlp, "act", (before_act,), (), (mlp.fc2,))


def gelu_sites(model: nn.Module) -> list[_Site]:
    """Every GELU the pass can rewrite: V1's MLPs, and the sites V2's modules declare."""
    sites = []
    for module in model.modules():
        v1 = _v1_site(module)
        if v1 is not None:
            sites.append(v1)
        elif hasattr(module, "gelu_sites"):
            sites += [_Site(*site) for site in module.gelu_sites()]
    return sites


class ErfGeluForm(ModelPass):
    """``fc2(gelu(fc1 x))`` with ``gelu(x) = 0.5 x (1 + erf(x / sqrt 2))`` becomes ``fc2'(u + u erf(u))``
    with ``u = fc1'(x) = fc1(x) / sqrt 2`` and ``fc2' = fc2 / sqrt 2``.

    Before (opset < 20)::                          After::

        fc1 -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> [Mul 0.5] -> fc2     fc1' -> Erf -> Mul(u) -> Add(u) -> fc2'

    One node fewer per GELU (two where the 0.5 is not folded by the simplifier), and no Div. ONNX Runtime
    does not fuse the MB4D GELUs of a plain export (measured), so this is also fewer kernels. For ONNX
    at opset < 20 only: from opset 20 ONNX has a Gelu op (one node), and Core ML has a gelu op.

    EfficientFormerV2 declares its sites (``gelu_sites()``): the stem's first conv, both FFN convs, and the
    attentions' output GELU, whose input ``attn @ v + v_local(v)`` scales with ``v`` once ``v_local``'s bias
    terms scale too (the upsampling between is linear)::

        v -> {attn @ v, v_local(v)} -> Add -> [Resize] -> GELU -> proj
        v' = v / sqrt 2, v_local offsets / sqrt 2          ... -> u + u erf(u) -> proj' (input / sqrt 2)

    The stem's second GELU feeds the residual stream rather than one linear layer, so it keeps its form.
    """

    name = "erf-gelu"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        inv_sqrt2 = 1.0 / math.sqrt(2.0)
        rewritten = 0
        for site in gelu_sites(model):
            act = getattr(site.owner, site.act)
            if not isinstance(act, nn.GELU) or act.approximate != "none":
                continue
            for layer in site.before:
                scale_output_channels(layer, torch.full((layer.weight.shape[0],), inv_sqrt2, dtype=torch.float64))
            for offset in site.offsets:
                offset.copy_((offset.double() * inv_sqrt2).to(offset.dtype))
            for layer in site.after:
                layer.weight.copy_((layer.weight.double() * inv_sqrt2).to(layer.weight.dtype))
            setattr(site.owner, site.act, ErfGelu())
            rewritten += 1
        return PassResult(changed=rewritten > 0, rewrites=rewritten)
