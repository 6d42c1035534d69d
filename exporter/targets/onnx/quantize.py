"""INT8 for the ONNX-based targets: ONNX Runtime's static quantization in QDQ form, node group by node group.

A float ONNX model becomes one whose weights are int8 (one scale per output channel) and whose activations are
8-bit, written as QuantizeLinear/DequantizeLinear pairs around each quantized op: ONNX Runtime's CPU provider
fuses them into integer kernels (QLinearConv, QLinearMatMul, QLinearAdd, QLinearAveragePool, ...), TensorRT
reads them as explicit quantization. The activation ranges are measured once on the calibration inputs (kept in
a calibration cache) and reused for every candidate the quantize stage tries, so keeping a group in float costs
one graph rewrite, not a new calibration.

Node groups come from the node names the exporter writes from the module path (``/stages/2/blocks/3/mlp/...``;
``exporter.node_groups``): a block, a downsampling layer, the stem, the norm, the head, and ``other``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from efexport.exporter.node_groups import onnx_node_group
from efexport.exporter.quiet import quieted

_QUANT_LOGGERS = ("root", "onnxruntime", "onnxruntime.quantization")


# ONNX Runtime's calibrators keep every intermediate tensor of every input they are given at once: l7 with 64
# inputs took more than 24 GiB and was killed. Fed in chunks (its CalibStridedMinMax option, which every
# calibrator honours: min/max ranges are merged, histograms accumulated), the memory is that of one chunk.
CALIBRATION_CHUNK = 8


def calibration_stride(count: int) -> int:
    """The largest chunk of at most ``CALIBRATION_CHUNK`` inputs that divides ``count`` (ONNX Runtime requires
    equal chunks)."""
    return max(size for size in range(1, min(count, CALIBRATION_CHUNK) + 1) if count % size == 0)


class _Inputs:
    """ONNX Runtime's CalibrationDataReader over a stack of inputs, one batch-1 feed at a time, in the ranges
    (chunks) the calibrator sets (a reader is consumed once; the quantizer asks for a fresh one per calibration)."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self._name, self._inputs = name, inputs
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(())
        self.set_range(0, len(inputs))

    def __len__(self) -> int:
        return len(self._inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter({self._name: self._inputs[i:i + 1]} for i in range(start_index, end_index))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


class OnnxQuantizer:
    """Writes QDQ versions of one float ONNX model that keep chosen node groups in float."""

    def __init__(self, float_model: Path, calibration: np.ndarray, workdir: Path, method: str, per_channel: bool,
                 symmetric_activations: bool = False) -> None:
        """``symmetric_activations``: int8 activations with zero points 0 and float biases, as TensorRT's explicit
        quantization takes them (else uint8 activations and int32 biases, ONNX Runtime's fastest CPU form)."""
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.workdir = workdir
        self.float_model = float_model
        self.prepared = workdir / "prepared.onnx"
        with quieted(*_QUANT_LOGGERS):
            # shape inference and ONNX Runtime's basic fusions first, as its quantizer expects
            quant_pre_process(str(float_model), str(self.prepared), skip_symbolic_shape=True)
        model = onnx.load(self.prepared)
        self.input_name = model.graph.input[0].name
        self.nodes: dict[str, list[str]] = {}
        for node in model.graph.node:
            self.nodes.setdefault(onnx_node_group(node.name), []).append(node.name)
        self.groups = tuple(self.nodes)
        self.calibration = calibration
        self.method = method
        self.per_channel = per_channel
        self.symmetric_activations = symmetric_activations
        self.cache = workdir / "calibration_cache.json"

    def describe(self) -> dict:
        activations = "int8, symmetric" if self.symmetric_activations else "uint8, asymmetric"
        biases = "float" if self.symmetric_activations else "int32"
        return {"format": "QDQ (QuantizeLinear/DequantizeLinear)", "tool": "onnxruntime.quantization",
                "weights": f"int8, symmetric, per {'channel' if self.per_channel else 'tensor'}; biases {biases}",
                "activations": f"{activations}, per tensor", "calibration_method": self.method}

    def build(self, float_groups: frozenset[str], path: Path) -> None:
        """Writes to ``path`` the model with every group but ``float_groups`` quantized (all float: the float
        model itself)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if set(self.groups) <= float_groups:
            shutil.copyfile(self.float_model, path)
            return
        excluded = [name for group in sorted(float_groups & set(self.groups)) for name in self.nodes[group]]
        activation = QuantType.QInt8 if self.symmetric_activations else QuantType.QUInt8
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.method]
        with quieted(*_QUANT_LOGGERS):
            quantize_static(str(self.prepared), str(path), _Inputs(self.input_name, self.calibration),
                            quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                            activation_type=activation, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                            calibrate_method=method, calibration_cache_path=str(self.cache),
                            extra_options={"CalibStridedMinMax": calibration_stride(len(self.calibration)),
                                           "ActivationSymmetric": self.symmetric_activations,
                                           "WeightSymmetric": True,
                                           # TensorRT dequantizes int8 only: its biases stay float
                                           "QuantizeBias": not self.symmetric_activations})
