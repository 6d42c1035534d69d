"""INT8 (W8A8) and weight compression for the Core ML target, with coremltools' own compression passes.

W8A8: weights int8 (``constexpr_affine_dequantize``, one symmetric scale per output channel) and activations
8-bit, written as iOS17 ``quantize``/``dequantize`` pairs around each quantizable op (conv, linear, add, pooling):
coremltools' ``linear_quantize_activations`` passes (``compression::insert_prefix_quantize_dequantize_pair``,
``insert_suffix_quantize_dequantize_pair``, ``common::dequantize_quantize_pair_elimination``) then
``compression::linear_quantize_weights``. coremltools measures the activation ranges by running the model with
Core ML's runtime (``ModelDebugger``), which exists only on macOS; the passes themselves take the ranges as an
option (``activation_stats``: var name -> rmin/rmax). Here the ranges come from efexport's ML Program interpreter
run on the calibration inputs (``run_program(keep=...)``), measured once and reused for every candidate.

Node groups: the program's op names are the captured graph's node names (``conv2d_10`` becomes
``conv2d_10_cast_fp16``); the converter records each node's module path (``stages.1.blocks.0.mlp.fc2``) in the
float package's metadata, so an op's group is its node's: ``stages/1/blocks/0``, ``stages/1/downsample``, ``stem``,
``head``, ..., and ``other`` for ops of no module (the input scaling, the softmax), as ONNX's groups are named.

A saved classifier package cannot be re-serialised by coremltools once read back (its class labels const), so
each candidate is the float program without its ``classify`` op, compressed, then converted again with the same
classifier, input and compute units as the float package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from efexport.exporter.node_groups import OTHER, captured_node_group
from efexport.exporter.preprocessing import IMAGENET
from efexport.validate.coreml_io import (
    INPUT_NAME,
    LABEL,
    LOGITS,
    PROBABILITIES,
    import_coremltools,
    normalised_to_pixels,
    quiet_coremltools,
)
from efexport.validate.mil_interpreter import load_program, run_program

GROUPS_KEY = "efexport.coreml.node_groups"  # float package metadata: captured node name -> node group (int8 only)
# ops whose inputs or outputs coremltools' activation passes quantize: their ranges are what calibration measures
ACTIVATION_OPS = ("conv", "linear", "add", "avg_pool", "max_pool")
COMPRESSIONS = ("none", "int8-weights", "palettize-6bit")


def node_groups(program) -> dict[str, str]:
    """Captured graph (torch.export) node name -> node group, from each node's innermost module."""
    return {node.name: captured_node_group(node) for node in program.graph.nodes}


def op_group(op_name: str, groups: dict[str, str]) -> str:
    """The group of the captured node a MIL op comes from: the longest node name that its name starts with, at
    an ``_`` boundary (``conv2d_1_cast_fp16`` -> ``conv2d_1``, not ``conv2d``)."""
    parts = op_name.split("_")
    for k in range(len(parts), 0, -1):
        group = groups.get("_".join(parts[:k]))
        if group is not None:
            return group
    return OTHER


# --- weight compression (fp16/fp32 packages) -------------------------------------------------------------------


def compression_pass(compress: str):
    """coremltools' graph pass for a ``coreml.compress`` setting (None for "none"). One look-up table per tensor,
    which every deployment target takes (measured on l1: one table per 16 output channels, from iOS18, was no
    closer)."""
    if compress == "none":
        return None
    import_coremltools()
    import coremltools.optimize.coreml as cto

    if compress == "int8-weights":
        name = "compression::linear_quantize_weights"
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    elif compress == "palettize-6bit":
        name = "compression::palettize_weights"
        # coremltools' mode="kmeans" needs scikit-learn, which the coreml extra does not install: the same
        # clustering (1-D k-means, 64 centres per tensor) through its custom-table hook
        op_config = cto.OpPalettizerConfig(mode="custom", lut_function=kmeans_table, granularity="per_tensor")
    else:
        raise ValueError(f"unknown compression {compress!r}")
    return _fresh_pass(name, config=cto.OptimizationConfig(global_config=op_config))


PALETTE_BITS = 6


def kmeans_table(weight: np.ndarray, nbits: int = PALETTE_BITS, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A ``2**nbits``-entry look-up table for one weight tensor and each element's index into it: 1-D k-means
    (Lloyd's iteration on the sorted values, from a companded start, until the centres stop moving), so each weight
    becomes its nearest centre. A tensor with no more distinct values than entries keeps them exactly."""
    values = weight.astype(np.float64).reshape(-1)
    size = 1 << nbits
    distinct = np.unique(values)
    if distinct.size <= size:
        table = np.concatenate([distinct, np.full(size - distinct.size, distinct[-1])])
        return table.astype(weight.dtype), np.searchsorted(distinct, values).astype(np.uint8)
    ordered = np.sort(values)
    # start where an optimal quantizer's centres lie, at a density proportional to the values' density ** (1/3):
    # Lloyd's iteration from plain quantiles crowds the dense middle and takes hundreds of steps to spread out
    counts, edges = np.histogram(ordered, bins=4096)
    cumulative = np.concatenate([[0.0], np.cumsum(np.cbrt(counts))])
    centres = np.interp((np.arange(size) + 0.5) / size * cumulative[-1], cumulative, edges)
    for _ in range(iterations):
        labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, ordered)
        counts = np.bincount(labels, minlength=size)
        sums = np.bincount(labels, weights=ordered, minlength=size)
        moved = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centres))
        if np.allclose(moved, centres, rtol=0, atol=1e-12):
            break
        centres = moved
    indices = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
    return centres.astype(weight.dtype), indices.astype(np.uint8)


def describe_compression(compress: str) -> dict | None:
    return {
        "none": None,
        "int8-weights": {"method": "linear_quantize_weights", "weights": "int8, symmetric, per output channel",
                         "op": "constexpr_affine_dequantize"},
        "palettize-6bit": {"method": "palettize_weights", "weights": "6-bit look-up table (64 entries per "
                                                                     "tensor, 1-D k-means)",
                           "op": "constexpr_lut_to_dense"},
    }[compress]


# --- W8A8 --------------------------------------------------------------------------------------------------------


def _strip_classifier(program) -> list[str]:
    """Remove the ``classify`` op (and its labels const): the function's outputs become logits and probabilities.
    Returns the labels."""
    function = program.functions["main"]
    classify = next(op for op in function.operations if op.op_type == "classify")
    labels = [str(label) for label in classify.inputs["classes"].val]
    probabilities = classify.inputs["probabilities"]
    logits = next(var for var in function.outputs if var.name == LOGITS)
    if probabilities.op is not None and probabilities.op.op_type == "cast":  # the fp32 cast coremltools added
        probabilities = probabilities.op.inputs["x"]
    function.set_outputs([logits, probabilities])
    function.remove_ops([classify])
    _remove_dead_ops(function)
    probabilities.name = PROBABILITIES
    return labels


def _strip_image_scaling(program) -> None:
    """Remove the ImageType's scale and bias ops (``image__scaled__``, ``image__biased__``): converting the program
    again with the same ImageType adds them back."""
    function = program.functions["main"]
    image = function.inputs[INPUT_NAME]
    scaled = next(op for op in image.child_ops if op.op_type == "mul")
    biased = next(op for op in scaled.outputs[0].child_ops if op.op_type == "add")
    function.replace_uses_of_var_after_op(anchor_op=biased, old_var=biased.outputs[0], new_var=image)
    function.remove_ops([biased, scaled])


def _remove_dead_ops(function) -> None:
    outputs = {id(var) for var in function.outputs}
    changed = True
    while changed:
        changed = False
        for op in reversed(list(function.operations)):
            if all(not var.child_ops and id(var) not in outputs for var in op.outputs):
                function.remove_ops([op])
                changed = True


class CoreMLQuantizer:
    """Writes W8A8 ML Program packages of one float package that keep chosen node groups in float."""

    def __init__(self, float_model: Path, calibration: np.ndarray, workdir: Path, method: str, compute_units: str,
                 per_channel: bool = True, deployment_target: str = "iOS17", threads: int = 1) -> None:
        ct = import_coremltools()
        self.float_model, self.workdir, self.method = float_model, workdir, method
        self.compute_units, self.per_channel = compute_units, per_channel
        self.deployment_target = deployment_target  # iOS17 or later: quantize/dequantize are iOS17 ops
        with quiet_coremltools():
            spec = ct.utils.load_spec(str(float_model))
        self.image_input = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        self.image_size = spec.description.input[0].type.imageType.width if self.image_input else \
            int(spec.description.input[0].type.multiArrayType.shape[-1])
        captured = json.loads(dict(spec.description.metadata.userDefined).get(GROUPS_KEY, "{}"))
        program = self._program()
        self.nodes: dict[str, list[str]] = {}
        for op in program.functions["main"].operations:
            if op.op_type not in ("const", "classify") and not op.op_type.startswith("constexpr_"):
                self.nodes.setdefault(op_group(op.name, captured), []).append(op.name)
        self.groups = tuple(self.nodes)
        self.stats = self._activation_ranges(program, calibration, threads)

    def _program(self):
        with quiet_coremltools():
            return load_program(self.float_model)

    def _activation_ranges(self, program, calibration: np.ndarray, threads: int) -> dict[str, dict[str, float]]:
        """rmin/rmax of every var the activation passes may quantize (the inputs and outputs of conv, linear, add,
        pooling, and of the activation after them), over the calibration inputs, with the interpreter."""
        function = program.functions["main"]
        wanted = set()
        for op in function.operations:
            if op.op_type in ACTIVATION_OPS:
                wanted.update(var.name for name, var in op.inputs.items() if name in ("x", "y")
                              and not isinstance(var, (list, tuple)) and (var.op is None or var.op.op_type != "const"))
                wanted.update(var.name for var in op.outputs)
                for child in op.outputs[0].child_ops:
                    wanted.update(var.name for var in child.outputs)
        declared = set(function.inputs) | {var.name for op in function.operations for var in op.outputs}
        keep = sorted(name for name in wanted & declared
                      if name in function.inputs or _is_float(_var(function, name)))
        low: dict[str, float] = {}
        high: dict[str, float] = {}
        for image in calibration:
            feed = normalised_to_pixels(image[None]) if self.image_input else image[None]
            run = run_program(program, {INPUT_NAME: feed}, keep=keep, threads=threads)
            for name, value in run.kept.items():
                lo, hi = _range(np.asarray(value, dtype=np.float32), self.method)
                low[name], high[name] = min(lo, low.get(name, lo)), max(hi, high.get(name, hi))
        return {name: {"rmin": low[name], "rmax": high[name]} for name in low}

    def describe(self) -> dict:
        return {"format": "ML Program W8A8: constexpr_affine_dequantize weights, quantize/dequantize activations",
                "tool": "coremltools.optimize.coreml passes (linear_quantize_activations' passes with "
                        "interpreter-measured ranges, linear_quantize_weights)",
                "weights": f"int8, symmetric, per {'output channel' if self.per_channel else 'tensor'}",
                "activations": "int8, symmetric, per tensor",
                "calibration_method": self.method}

    def build(self, float_groups: frozenset[str], path: Path) -> None:
        """Writes to ``path`` the package with every group but ``float_groups`` quantized (all float: the float
        package itself)."""
        if set(self.groups) <= float_groups:
            shutil.copytree(self.float_model, path)
            return
        ct = import_coremltools()
        import coremltools.optimize.coreml as cto

        program = self._program()
        labels = _strip_classifier(program)
        if self.image_input:
            _strip_image_scaling(program)
        skipped = {name: None for group in float_groups & set(self.groups) for name in self.nodes[group]}
        activations = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"),
            op_name_configs=skipped)
        weights = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                      granularity="per_channel" if self.per_channel else "per_tensor"))
        passes = [_fresh_pass("compression::insert_prefix_quantize_dequantize_pair", config=activations,
                              activation_stats=self.stats),
                  _fresh_pass("compression::insert_suffix_quantize_dequantize_pair", config=activations,
                              activation_stats=self.stats),
                  _fresh_pass("common::dequantize_quantize_pair_elimination"),
                  _fresh_pass("compression::linear_quantize_weights", config=weights)]
        # a weight stays float when every op it feeds stays float
        passes[-1].op_selector = lambda const: not all(child.name in skipped for child in const.outputs[0].child_ops)
        with quiet_coremltools():
            for graph_pass in passes:
                graph_pass(program)
            input_type = (ct.ImageType(name=INPUT_NAME, shape=(1, 3, self.image_size, self.image_size),
                                       scale=1 / 255, bias=[-m for m in IMAGENET.mean],
                                       color_layout=ct.colorlayout.RGB)
                          if self.image_input else
                          ct.TensorType(name=INPUT_NAME, shape=(1, 3, self.image_size, self.image_size),
                                        dtype=np.float32))
            model = ct.convert(program, inputs=[input_type], convert_to="mlprogram",
                               minimum_deployment_target=getattr(ct.target, self.deployment_target),
                               compute_precision=ct.precision.FLOAT32,  # the program's own types stay as they are
                               compute_units=getattr(ct.ComputeUnit, self.compute_units),
                               classifier_config=ct.ClassifierConfig(labels, predicted_feature_name=LABEL,
                                                                     predicted_probabilities_output=PROBABILITIES))
            model.save(str(path))


def _fresh_pass(name: str, **options):
    """A new instance of a registered coremltools graph pass with ``options`` set (the registry's instances are
    shared: options set on them would stay for every later user)."""
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    graph_pass = type(PASS_REGISTRY[name])()
    graph_pass.set_options([PassOption(key, value) for key, value in options.items()])
    return graph_pass


def _var(function, name: str):
    if name in function.inputs:
        return function.inputs[name]
    for op in function.operations:
        for var in op.outputs:
            if var.name == name:
                return var
    raise KeyError(name)


def _is_float(var) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_tensor(var.sym_type) and var.dtype in (types.fp16, types.fp32)


def _range(values: np.ndarray, method: str) -> tuple[float, float]:
    """One calibration input's range of a tensor: its min and max, or (percentile) the 0.001st and 99.999th
    percentiles, as ONNX Runtime's percentile calibration takes."""
    if method == "minmax" or values.size < 1000:
        return float(values.min()), float(values.max())
    lo, hi = np.quantile(values.reshape(-1), [1e-5, 1 - 1e-5])
    return float(lo), float(hi)
