"""INT8 for the Core AI target: coreai-opt's post-training quantization (W8A8), node group by node group.

coreai-opt's graph-mode ``Quantizer`` (torchao's PT2E underneath) exports the folded model, inserts fake
quantizers (int8, symmetric: weights one scale per output channel, activations one per tensor), measures the
activation ranges on the calibration inputs (``global_minmax``: the extremes over every input), and its
``finalize`` for the Core AI backend replaces them with Core AI's own ops: weights stored as int8
(``constexpr_blockwise_shift_scale``), activations through ``quantize``/``dequantize`` pairs. coreai-torch converts
that program like any other.

That preparation and calibration (about a minute for l1 on two cores) is done once. A candidate that keeps node
groups in float is the calibrated graph with those groups' ops reading the float tensors their fake quantizers
would have quantized (their weights and inputs): no new calibration, just finalize, ``torch.export`` and the
conversion. A group is as for the ONNX target: a block, a downsampling layer, the stem, the norm, the head,
from the module path of each op (``stages.2.blocks.3.mlp.fc1`` -> ``stages/2/blocks/3``); ops outside any
module are ``other``.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from efexport.exporter.node_groups import captured_node_group
from efexport.exporter.quiet import quieted
from efexport.exporter.stages.capture import CapturedGraph

# what coreai-opt's import logs (torchao: a CUDA kernel library; torch: an Enum registration): quieted here and by
# the converter (convert.quiet_converters)
CONVERTER_LOGGERS = ("torchao", "torch.utils._pytree")
CALIBRATION_BATCH = 8  # inputs per calibration forward (global min/max: batching changes nothing)


def _fake_quantizer_class() -> type:
    from coreai_opt.quantization.spec.fake_quantize import FakeQuantizeImplBase

    return FakeQuantizeImplBase


def _config(per_channel: bool):
    from coreai_opt.quantization import ModuleQuantizerConfig, QuantizationSpec, QuantizerConfig
    from coreai_opt.quantization.spec import PerChannelGranularity, PerTensorGranularity

    activation = QuantizationSpec(dtype=torch.int8, qscheme="symmetric", granularity=PerTensorGranularity(),
                                  fake_quantize_cls="default", qparam_calculator_cls="global_minmax",
                                  range_calculator_cls="minmax")
    weight = QuantizationSpec(dtype=torch.int8, qscheme="symmetric",
                              granularity=PerChannelGranularity(axis=0) if per_channel else PerTensorGranularity(),
                              fake_quantize_cls="default", qparam_calculator_cls="static",
                              range_calculator_cls="minmax")
    return QuantizerConfig(global_config=ModuleQuantizerConfig(
        op_input_spec={"*": activation}, op_output_spec={"*": activation}, op_state_spec={"weight": weight}))


class CoreAIQuantizer:
    """Writes W8A8 Core AI assets of one captured model that keep chosen node groups in float.

    ``write`` turns a converted AIProgram into the asset at a path (the target's writer: minimum OS, metadata).
    """

    def __init__(self, captured: CapturedGraph, float_model: Path, calibration: np.ndarray, per_channel: bool,
                 convert: Callable[[torch.export.ExportedProgram], object], write: Callable[[object, Path], None])\
            -> None:
        self.float_model, self.per_channel = float_model, per_channel
        self._convert, self._write = convert, write
        self.example = captured.example
        with quieted(*CONVERTER_LOGGERS), torch.no_grad():
            from coreai_opt.quantization import Quantizer

            self._quantizer = Quantizer(copy.deepcopy(captured.model).eval(), _config(per_channel))
            self.prepared = self._quantizer.prepare((captured.example,))
            with self._quantizer.calibration_mode():
                for start in range(0, len(calibration), CALIBRATION_BATCH):
                    self.prepared(torch.from_numpy(np.ascontiguousarray(calibration[start:start + CALIBRATION_BATCH])))
        fake = _fake_quantizer_class()
        modules = dict(self.prepared.named_modules())
        self.nodes: dict[str, list[str]] = {}
        for node in self.prepared.graph.nodes:
            if node.op == "call_function" and not _is_fake_quant(node, modules, fake):
                self.nodes.setdefault(captured_node_group(node), []).append(node.name)
        self.groups = tuple(self.nodes)

    def describe(self) -> dict:
        return {"format": "Core AI quantize/dequantize (activations), constexpr_blockwise_shift_scale (weights)",
                "tool": f"coreai-opt {_version('coreai-opt')} (graph mode, Core AI backend)",
                "weights": f"int8, symmetric, per {'channel' if self.per_channel else 'tensor'}",
                "activations": "int8, symmetric, per tensor", "calibration_method": "minmax"}

    def quantized_graph(self, float_groups: frozenset[str]) -> torch.fx.GraphModule:
        """The calibrated graph with ``float_groups``' ops reading float tensors, finalized for Core AI."""
        from coreai_opt.common import ExportBackend

        graph_module = copy.deepcopy(self.prepared)
        fake = _fake_quantizer_class()
        modules = dict(graph_module.named_modules())
        for node in list(graph_module.graph.nodes):
            if not _is_fake_quant(node, modules, fake):
                continue
            source = node.args[0]
            for user in list(node.users):
                if captured_node_group(user) in float_groups:
                    user.replace_input_with(node, source)
            if not node.users:
                graph_module.graph.erase_node(node)
        graph_module.recompile()
        if not any(_is_fake_quant(node, modules, fake) for node in graph_module.graph.nodes):
            raise ValueError("nothing left to quantize")
        return self._quantizer.finalize(graph_module, ExportBackend.CoreAI)

    def build(self, float_groups: frozenset[str], path: Path) -> None:
        """Writes to ``path`` the asset with every group but ``float_groups`` quantized (all float: the float
        asset itself)."""
        if set(self.groups) <= float_groups:
            shutil.copytree(self.float_model, path)
            return
        with quieted(*CONVERTER_LOGGERS):
            graph_module = self.quantized_graph(float_groups)
            program = torch.export.export(graph_module, (self.example,))
        self._write(self._convert(program), path)


def _is_fake_quant(node: torch.fx.Node, modules: dict, fake: type) -> bool:
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), fake)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
