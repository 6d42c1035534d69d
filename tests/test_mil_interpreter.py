"""The NumPy reference interpreter for Core ML ML Programs: each op against an independent reference, FP16 rounding
and overflow reporting, loud failures, and EfficientFormer-L1 programs (plain and folded) against PyTorch."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tqdm
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from efexport.validate.mil_interpreter import (
    FP16_MAX,
    KERNELS,
    SAMPLE_SIZE,
    SUPPORTED_OPS,
    MilProgramError,
    UnsupportedOpError,
    compare_runs,
    first_divergence,
    fp16_headroom,
    load_program,
    overflowing,
    run_program,
)
from tests.test_mil_quantized_ops import COVERED_OPS as QUANTIZED_OPS

RNG_SEED = 7
FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tracing, folding and converting on one thread: on a shared 2-core machine two threads stall badly."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools warns about the untested torch version, logs, and draws progress bars per conversion; none of it
    is under test."""
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.mil.passes import pass_pipeline

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            silent = functools.partial(tqdm.tqdm, disable=True)
            for module, name in ((pass_pipeline, "tqdm"), (torch_ops, "_tqdm")):
                if hasattr(module, name):  # the bars' module-level names are coremltools internals
                    stack.enter_context(mock.patch.object(module, name, silent))
            yield
    finally:
        logger.setLevel(level)


def _rand(*shape: int, low: float = -2.0, high: float = 2.0, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def _program(body: Callable, *shapes: tuple[int, ...], dtype=types.fp32, opset=None):
    """A one-function MIL program with inputs named x, y, z (as many as shapes)."""
    specs = [mb.TensorSpec(shape=s, dtype=dtype) for s in shapes]
    if len(shapes) == 1:
        def main(x):
            return body(x)
    elif len(shapes) == 2:
        def main(x, y):
            return body(x, y)
    else:
        def main(x, y, z):
            return body(x, y, z)
    return mb.program(input_specs=specs, opset_version=opset)(main)


def _run(prog, *arrays: np.ndarray, **kwargs) -> list[np.ndarray]:
    names = list(prog.functions["main"].inputs)
    run = run_program(prog, dict(zip(names, arrays, strict=True)), **kwargs)
    return list(run.outputs.values())


def _roundtrip(prog, tmp_path: Path, precision=None, name: str = "prog"):
    """Convert a MIL program to an ML Program package, save it, and read it back with load_program."""
    with _quiet():
        model = ct.convert(prog, convert_to="mlprogram", compute_precision=precision or ct.precision.FLOAT32)
        path = tmp_path / f"{name}.mlpackage"
        model.save(str(path))
    return load_program(path)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# ---------------------------------------------------------------------------------------------------------------
# One case per op behaviour: (MIL body, inputs, independent reference). References are PyTorch functional ops or
# float64 NumPy formulas; padding geometry for "same" is written out by hand.
# ---------------------------------------------------------------------------------------------------------------

W_CONV = _rand(6, 2, 3, 2, seed=1) * 0.5
B_CONV = _rand(6, seed=2)
W_LIN = _rand(6, 8, seed=3)
B_LIN = _rand(6, seed=4)
GAMMA5, BETA5 = _rand(5, low=0.5, high=1.5, seed=5), _rand(5, seed=6)
GAMMA54 = _rand(5, 4, low=0.5, high=1.5, seed=8)


def _erf64(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x.astype(np.float64))


def _torch_same_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int) -> torch.Tensor:
    with warnings.catch_warnings():  # PyTorch notes that an even kernel makes it pad a copy: expected here
        warnings.simplefilter("ignore", UserWarning)
        return F.conv2d(_t(x), _t(w), _t(b), padding="same", groups=groups)


def _interleave(values: list[np.ndarray]) -> np.ndarray:
    out = np.empty((values[0].shape[0], values[0].shape[1] * len(values), *values[0].shape[2:]), np.float32)
    for j, v in enumerate(values):
        out[:, j::len(values)] = v
    return out


def _layer_norm64(x: np.ndarray, axes: tuple[int, ...], gamma: np.ndarray, beta: np.ndarray | None) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = [x.shape[d] if d in axes else 1 for d in range(x.ndim)]
    out = (x - mean) / np.sqrt(var + 1e-5) * gamma.reshape(shape)
    return out + beta.reshape(shape) if beta is not None else out


def _resize64(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of the last two dims at the given (in-range) points: np.interp along each axis, float64."""
    def along(a: np.ndarray, points: np.ndarray, axis: int) -> np.ndarray:
        return np.apply_along_axis(lambda v: np.interp(points, np.arange(v.size), v), axis, a)

    return along(along(x.astype(np.float64), rows, -2), cols, -1)


X4 = _rand(2, 3, 4, 5)
Y4 = _rand(1, 3, 1, 5, seed=11)
POS = _rand(2, 3, 4, 5, low=0.1, high=3.0)
IMG = _rand(2, 4, 8, 7)  # conv / pool input: odd width so "same" padding differs between the two sides

CASES: dict[str, tuple[Callable, list[np.ndarray], Callable]] = {
    # elementwise binary, NumPy broadcasting
    "add": (lambda x, y: mb.add(x=x, y=y), [X4, Y4], lambda x, y: x + y),
    "sub": (lambda x, y: mb.sub(x=x, y=y), [X4, Y4], lambda x, y: x - y),
    "mul": (lambda x, y: mb.mul(x=x, y=y), [X4, Y4], lambda x, y: x * y),
    "real_div": (lambda x, y: mb.real_div(x=x, y=y), [X4, np.abs(Y4) + 0.5], lambda x, y: x / y),
    "maximum": (lambda x, y: mb.maximum(x=x, y=y), [X4, Y4], np.maximum),
    "minimum": (lambda x, y: mb.minimum(x=x, y=y), [X4, Y4], np.minimum),
    "pow": (lambda x: mb.pow(x=x, y=np.float32(1.7)), [POS], lambda x: x.astype(np.float64) ** 1.7),
    "mul-scalar-const": (lambda x: mb.mul(x=x, y=0.25), [X4], lambda x: x * 0.25),
    # elementwise unary
    "sqrt": (lambda x: mb.sqrt(x=x), [POS], lambda x: np.sqrt(x.astype(np.float64))),
    "rsqrt": (lambda x: mb.rsqrt(x=x), [POS], lambda x: 1 / np.sqrt(x.astype(np.float64) + 1e-12)),
    "rsqrt-epsilon": (lambda x: mb.rsqrt(x=x, epsilon=0.5), [POS], lambda x: 1 / np.sqrt(x.astype(np.float64) + 0.5)),
    "relu": (lambda x: mb.relu(x=x), [X4], lambda x: np.maximum(x, 0)),
    "sigmoid": (lambda x: mb.sigmoid(x=x), [X4], lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))),
    "tanh": (lambda x: mb.tanh(x=x), [X4], lambda x: np.tanh(x.astype(np.float64))),
    "erf": (lambda x: mb.erf(x=x), [X4], _erf64),
    "exp": (lambda x: mb.exp(x=x), [X4], lambda x: np.exp(x.astype(np.float64))),
    "gelu-exact": (lambda x: mb.gelu(x=x), [X4 * 2], lambda x: 0.5 * x * (1 + _erf64(x / math.sqrt(2)))),
    "gelu-tanh": (lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"), [X4 * 2],
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * np.float64(x) ** 3)))),
    "gelu-sigmoid": (lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), [X4 * 2],
                     lambda x: x / (1 + np.exp(-1.702 * x.astype(np.float64)))),
    "identity": (lambda x: mb.identity(x=x), [X4], lambda x: x),
    "cast-int32": (lambda x: mb.cast(x=x, dtype="int32"), [X4 * 3], lambda x: np.trunc(x)),
    # convolution: padding rules, strides, dilations, groups, bias
    "conv-valid": (lambda x: mb.conv(x=x, weight=W_CONV, bias=B_CONV, groups=2), [IMG],
                   lambda x: F.conv2d(_t(x), _t(W_CONV), _t(B_CONV), groups=2)),
    "conv-custom": (lambda x: mb.conv(x=x, weight=W_CONV, pad_type="custom", pad=[1, 2, 0, 3], strides=[2, 1],
                                      dilations=[2, 1], groups=2), [IMG],
                    lambda x: F.conv2d(F.pad(_t(x), (0, 3, 1, 2)), _t(W_CONV), stride=(2, 1), dilation=(2, 1),
                                       groups=2)),
    # same, stride 2, kernel 3x2 on 8x7: out 4x4, total pad H = 3*2+3-8 = 1 -> (0, 1), W = 3*2+2-7 = 1 -> (0, 1)
    "conv-same-stride2": (lambda x: mb.conv(x=x, weight=W_CONV, pad_type="same", strides=[2, 2], groups=2), [IMG],
                          lambda x: F.conv2d(F.pad(_t(x), (0, 1, 0, 1)), _t(W_CONV), stride=2, groups=2)),
    # same_lower puts the odd pad element first
    "conv-same_lower": (lambda x: mb.conv(x=x, weight=W_CONV, pad_type="same_lower", strides=[2, 2], groups=2),
                        [IMG], lambda x: F.conv2d(F.pad(_t(x), (1, 0, 1, 0)), _t(W_CONV), stride=2, groups=2)),
    # same, stride 1, kernel 3x2: torch's padding="same" has the same rule (odd element after)
    "conv-same-stride1": (lambda x: mb.conv(x=x, weight=W_CONV, bias=B_CONV, pad_type="same", groups=2), [IMG],
                          lambda x: _torch_same_conv(x, W_CONV, B_CONV, groups=2)),
    "conv1d": (lambda x: mb.conv(x=x, weight=W_CONV[:, :, :, 0], pad_type="custom", pad=[2, 1], groups=2),
               [IMG[:, :, :, 0]], lambda x: F.conv1d(F.pad(_t(x), (2, 1)), _t(W_CONV[:, :, :, 0]), groups=2)),
    # pooling
    "avg_pool-include-pad": (lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[1, 1], pad_type="custom",
                                                   pad=[1, 1, 1, 1], exclude_padding_from_average=False), [IMG],
                             lambda x: F.avg_pool2d(_t(x), 3, 1, 1, count_include_pad=True)),
    "avg_pool-exclude-pad": (lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[1, 1], pad_type="custom",
                                                   pad=[1, 1, 1, 1], exclude_padding_from_average=True), [IMG],
                             lambda x: F.avg_pool2d(_t(x), 3, 1, 1, count_include_pad=False)),
    "avg_pool-same": (lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[1, 1], pad_type="same",
                                            exclude_padding_from_average=True), [IMG],
                      lambda x: F.avg_pool2d(_t(x), 3, 1, 1, count_include_pad=False)),
    "avg_pool-valid-stride2": (lambda x: mb.avg_pool(x=x, kernel_sizes=[2, 3], strides=[2, 2], pad_type="valid"),
                               [IMG], lambda x: F.avg_pool2d(_t(x), (2, 3), 2)),
    "avg_pool-ceil-include": (lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                                    pad=[1, 1, 1, 1], ceil_mode=True), [IMG],
                              lambda x: F.avg_pool2d(_t(x), 3, 2, 1, ceil_mode=True, count_include_pad=True)),
    "avg_pool-ceil-exclude": (lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                                    pad=[1, 1, 1, 1], ceil_mode=True,
                                                    exclude_padding_from_average=True), [IMG],
                              lambda x: F.avg_pool2d(_t(x), 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    "avg_pool-ceil-nopad": (lambda x: mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid",
                                                  ceil_mode=True), [IMG],
                            lambda x: F.avg_pool2d(_t(x), 2, 2, ceil_mode=True)),
    "max_pool-custom": (lambda x: mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                              pad=[1, 1, 1, 1]), [IMG], lambda x: F.max_pool2d(_t(x), 3, 2, 1)),
    "max_pool-ceil": (lambda x: mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                            pad=[1, 1, 1, 1], ceil_mode=True), [IMG],
                      lambda x: F.max_pool2d(_t(x), 3, 2, 1, ceil_mode=True)),
    "max_pool-same": (lambda x: mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[1, 1], pad_type="same"), [IMG],
                      lambda x: F.max_pool2d(_t(x), 3, 1, 1)),
    # linear algebra
    "linear": (lambda x: mb.linear(x=x, weight=W_LIN, bias=B_LIN), [_rand(2, 5, 8)],
               lambda x: F.linear(_t(x), _t(W_LIN), _t(B_LIN))),
    "linear-no-bias": (lambda x: mb.linear(x=x, weight=W_LIN), [_rand(3, 8)], lambda x: F.linear(_t(x), _t(W_LIN))),
    "matmul": (lambda x, y: mb.matmul(x=x, y=y), [_rand(2, 1, 3, 4), _rand(5, 4, 6, seed=12)],
               lambda x, y: torch.matmul(_t(x), _t(y))),
    "matmul-transpose": (lambda x, y: mb.matmul(x=x, y=y, transpose_x=True, transpose_y=True),
                         [_rand(2, 1, 4, 3), _rand(5, 6, 4, seed=12)],
                         lambda x, y: torch.matmul(_t(x).transpose(-1, -2), _t(y).transpose(-1, -2))),
    "matmul-rank1": (lambda x, y: mb.matmul(x=x, y=y), [_rand(4), _rand(4, 3, seed=12)],
                     lambda x, y: torch.matmul(_t(x), _t(y))),
    # shape and layout
    "reshape": (lambda x: mb.reshape(x=x, shape=[0, 0, -1, 1]), [X4], lambda x: x.reshape(2, 3, 20, 1)),
    "transpose": (lambda x: mb.transpose(x=x, perm=[0, 3, 1, 2]), [X4], lambda x: x.transpose(0, 3, 1, 2)),
    "squeeze-axes": (lambda x: mb.squeeze(x=x, axes=[1, 2]), [_rand(2, 1, 3, 1)], lambda x: x.reshape(2, 3, 1)),
    "squeeze-all": (lambda x: mb.squeeze(x=x), [_rand(2, 1, 3, 1)], lambda x: x.reshape(2, 3)),
    "expand_dims": (lambda x: mb.expand_dims(x=x, axes=[0, -1]), [_rand(2, 3)], lambda x: x.reshape(1, 2, 3, 1)),
    "concat": (lambda x, y: mb.concat(values=[x, y, x], axis=-1), [X4, X4 * 3],
               lambda x, y: np.concatenate([x, y, x], axis=3)),
    "concat-interleave": (lambda x, y: mb.concat(values=[x, y], axis=1, interleave=True), [X4, X4 * 3],
                          lambda x, y: _interleave([x, y])),
    "split-num": (lambda x: mb.split(x=x, num_splits=2, axis=-1), [_rand(2, 3, 4)],
                  lambda x: [x[..., :2], x[..., 2:]]),
    "split-sizes": (lambda x: mb.split(x=x, split_sizes=[1, 3, 1], axis=3), [X4],
                    lambda x: [x[..., :1], x[..., 1:4], x[..., 4:]]),
    "slice_by_index": (lambda x: mb.slice_by_index(x=x, begin=[0, 1, -3, 4], end=[2, 3, 4, 0], stride=[1, 1, 2, -2],
                                                   end_mask=[False, False, False, True]), [X4],
                       lambda x: x[0:2, 1:3, -3:4:2, 4::-2]),
    "slice_by_index-masks": (lambda x: mb.slice_by_index(x=x, begin=[1, 9, 1, 2], end=[0, 2, 3, 9],
                                                         begin_mask=[False, True, False, False],
                                                         end_mask=[False, False, False, True],
                                                         squeeze_mask=[True, False, False, False]), [X4],
                             lambda x: x[1, :2, 1:3, 2:]),
    "slice_by_size": (lambda x: mb.slice_by_size(x=x, begin=[1, 0, 1, 2], size=[1, -1, 2, 3]), [X4],
                      lambda x: x[1:2, :, 1:3, 2:5]),
    # normalisation, softmax, reductions
    "layer_norm-last": (lambda x: mb.layer_norm(x=x, axes=[-1], gamma=GAMMA5, beta=BETA5), [X4],
                        lambda x: F.layer_norm(_t(x), (5,), _t(GAMMA5), _t(BETA5))),
    "layer_norm-axis1": (lambda x: mb.layer_norm(x=x, axes=[1], gamma=GAMMA5, beta=BETA5), [_rand(2, 5, 3, 4)],
                         lambda x: _layer_norm64(x, (1,), GAMMA5, BETA5)),
    "layer_norm-axes31": (lambda x: mb.layer_norm(x=x, axes=[3, 1], gamma=GAMMA54), [_rand(2, 5, 3, 4)],
                          lambda x: _layer_norm64(x, (1, 3), GAMMA54, None)),
    "batch_norm": (lambda x: mb.batch_norm(x=x, mean=BETA5, variance=GAMMA5, gamma=GAMMA5, beta=BETA5, epsilon=1e-3),
                   [_rand(2, 5, 3, 4)],
                   lambda x: F.batch_norm(_t(x), _t(BETA5), _t(GAMMA5), _t(GAMMA5), _t(BETA5), eps=1e-3)),
    "softmax": (lambda x: mb.softmax(x=x, axis=1), [X4 * 3], lambda x: torch.softmax(_t(x).double(), dim=1)),
    "reduce_mean": (lambda x: mb.reduce_mean(x=x, axes=[1, -1], keep_dims=True), [X4],
                    lambda x: x.astype(np.float64).mean(axis=(1, 3), keepdims=True)),
    "reduce_sum": (lambda x: mb.reduce_sum(x=x, axes=[2]), [X4], lambda x: x.astype(np.float64).sum(axis=2)),
    "reduce_max-all": (lambda x: mb.reduce_max(x=x), [X4], lambda x: x.max()),
    # bilinear resizing, against PyTorch's F.interpolate (Core ML's grid comes from the sizes: spacing Xin / Xout)
    "upsample_bilinear-half-pixel": (
        lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=False),
        [IMG], lambda x: F.interpolate(_t(x), scale_factor=2, mode="bilinear", align_corners=False)),
    "upsample_bilinear-align-corners": (
        lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=3.0, align_corners=True),
        [IMG], lambda x: F.interpolate(_t(x), scale_factor=(2, 3), mode="bilinear", align_corners=True)),
    "upsample_bilinear-default-aligns": (  # align_corners defaults to True
        lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0),
        [IMG], lambda x: F.interpolate(_t(x), scale_factor=2, mode="bilinear", align_corners=True)),
    # 8x7 by 1.5 x 2.5: 12 x floor(17.5) = 17, sampled with 7/17 (not 1/2.5) along the width
    "upsample_bilinear-fractional": (
        lambda x: mb.upsample_bilinear(x=x, scale_factor_height=1.5, scale_factor_width=2.5, align_corners=False),
        [IMG], lambda x: F.interpolate(_t(x), size=(12, 17), mode="bilinear", align_corners=False)),
    "resize_bilinear-unalign": (
        lambda x: mb.resize_bilinear(x=x, target_size_height=11, target_size_width=5,
                                     sampling_mode="UNALIGN_CORNERS"),
        [IMG], lambda x: F.interpolate(_t(x), size=(11, 5), mode="bilinear", align_corners=False)),
    "resize_bilinear-strict-align": (
        lambda x: mb.resize_bilinear(x=x, target_size_height=3, target_size_width=13,
                                     sampling_mode="STRICT_ALIGN_CORNERS"),
        [IMG], lambda x: F.interpolate(_t(x), size=(3, 13), mode="bilinear", align_corners=True)),
    "resize_bilinear-default": (  # asymmetric: output i samples i * Xin / Xout
        lambda x: mb.resize_bilinear(x=x, target_size_height=12, target_size_width=4),
        [IMG], lambda x: _resize64(x, np.arange(12) * 8 / 12, np.arange(4) * 7 / 4)),
    "resize_bilinear-offset": (  # delta = max(1, Xin - 1) / Xout, points 0.5 delta + i delta
        lambda x: mb.resize_bilinear(x=x, target_size_height=5, target_size_width=9,
                                     sampling_mode="OFFSET_CORNERS"),
        [IMG], lambda x: _resize64(x, (np.arange(5) + 0.5) * 7 / 5, (np.arange(9) + 0.5) * 6 / 9)),
}

# Cases also run after ct.convert + save + load_program, so the on-disk representation is covered too.
ROUNDTRIP = ("conv-custom", "avg_pool-exclude-pad", "matmul-transpose", "split-sizes", "layer_norm-axis1",
             "gelu-tanh", "concat-interleave", "slice_by_index", "upsample_bilinear-half-pixel",
             "resize_bilinear-offset")


def _as_list(value) -> list[np.ndarray]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [np.asarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v) for v in items]


def _check_case(prog, case: str) -> None:
    _, arrays, reference = CASES[case]
    got = _run(prog, *arrays)
    expected = _as_list(reference(*arrays))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), **FP32_TOL)


def test_every_supported_op_has_a_case() -> None:
    covered = set()
    for body, arrays, _ in CASES.values():
        prog = _program(body, *[a.shape for a in arrays])
        covered |= {op.op_type for op in prog.functions["main"].operations}
    covered |= set(QUANTIZED_OPS)  # quantize, dequantize, constexpr_*: tests/test_mil_quantized_ops.py
    assert covered >= set(SUPPORTED_OPS)
    assert set(SUPPORTED_OPS) == {"const", *KERNELS}


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_reference(case: str) -> None:
    body, arrays, _ = CASES[case]
    _check_case(_program(body, *[a.shape for a in arrays]), case)


@pytest.mark.parametrize("case", ROUNDTRIP)
def test_op_matches_reference_after_save_and_load(case: str, tmp_path: Path) -> None:
    body, arrays, _ = CASES[case]
    _check_case(_roundtrip(_program(body, *[a.shape for a in arrays]), tmp_path), case)


# Core ML's documented grid points for Xin = 2 (coremltools' resize_bilinear docstring), per sampling mode
DOCUMENTED_GRIDS = {
    ("UNALIGN_CORNERS", 5): [0.0, 0.1, 0.5, 0.9, 1.0],
    ("UNALIGN_CORNERS", 6): [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0],
    ("STRICT_ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    ("DEFAULT", 5): [0.0, 0.4, 0.8, 1.0, 1.0],
    ("DEFAULT", 6): [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0],
    ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
    ("OFFSET_CORNERS", 6): [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12],
    ("ALIGN_CORNERS", 1): [0.5],  # the one case where ALIGN_CORNERS and STRICT_ALIGN_CORNERS differ
    ("STRICT_ALIGN_CORNERS", 1): [0.0],
}


@pytest.mark.parametrize(("mode", "size_out"), list(DOCUMENTED_GRIDS))
def test_resize_bilinear_samples_the_documented_grid(mode: str, size_out: int) -> None:
    """A 1 x 2 row [0, 1] resized to 1 x size_out: each output is the grid point it sampled."""
    prog = _program(lambda x: mb.resize_bilinear(x=x, target_size_height=1, target_size_width=size_out,
                                                 sampling_mode=mode), (1, 1, 2))
    (out,) = _run(prog, np.array([[[0.0, 1.0]]], np.float32))
    np.testing.assert_allclose(out.reshape(-1), DOCUMENTED_GRIDS[mode, size_out], atol=1e-6)


@pytest.mark.parametrize(("flags", "align_corners"), [
    ({"align_corners": False, "half_pixel_centers": True}, False),
    ({"align_corners": True, "half_pixel_centers": False}, True),
    ({"align_corners": False}, False),  # iOS16: half_pixel_centers defaults to not align_corners
])
def test_ios16_upsample_bilinear_half_pixel_centers(flags: dict, align_corners: bool) -> None:
    prog = _program(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=1.5, **flags),
                    IMG.shape, opset=ct.target.iOS16)
    (out,) = _run(prog, IMG)
    expected = F.interpolate(_t(IMG), size=(16, 10), mode="bilinear", align_corners=align_corners)
    np.testing.assert_allclose(out, expected.numpy(), **FP32_TOL)


def test_ios16_upsample_bilinear_asymmetric_grid() -> None:
    """Neither aligned corners nor half-pixel centres: output i samples i * Xin / Xout (TensorFlow's legacy)."""
    prog = _program(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0,
                                                   align_corners=False, half_pixel_centers=False),
                    IMG.shape, opset=ct.target.iOS16)
    (out,) = _run(prog, IMG)
    rows, cols = np.minimum(np.arange(16) / 2, 7), np.minimum(np.arange(14) / 2, 6)
    np.testing.assert_allclose(out, _resize64(IMG, rows, cols), **FP32_TOL)


def test_upsample_bilinear_refuses_aligned_corners_with_half_pixel_centres() -> None:
    prog = _program(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0,
                                                   align_corners=True, half_pixel_centers=True, name="up"),
                    (1, 1, 2, 2), opset=ct.target.iOS16)
    with pytest.raises(MilProgramError, match="'up': align_corners and half_pixel_centers are mutually exclusive"):
        run_program(prog, {"x": np.ones((1, 1, 2, 2), np.float32)})


def test_upsample_bilinear_in_fp16_rounds_its_result() -> None:
    """The V2 attention's x2 upsample in an fp16 program: float16 out, within one float16 step of PyTorch."""
    prog = _program(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0,
                                                   align_corners=False), IMG.shape, dtype=types.fp16)
    (out,) = _run(prog, IMG)
    expected = F.interpolate(_t(IMG.astype(np.float16).astype(np.float32)), scale_factor=2, mode="bilinear",
                             align_corners=False).numpy()
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), expected, rtol=1e-3, atol=1e-3)


def test_fp16_weights_conv_rounds_like_the_device() -> None:
    """An fp16 program: inputs, weights and the result are float16; the op itself computes in float32."""
    x16, w16, b16 = IMG.astype(np.float16), W_CONV.astype(np.float16), B_CONV.astype(np.float16)
    prog = _program(lambda x: mb.conv(x=x, weight=w16, bias=b16, pad_type="same", groups=2), IMG.shape,
                    dtype=types.fp16)
    (out,) = _run(prog, IMG)  # float32 in: rounded to the fp16 input on the way in
    assert out.dtype == np.float16
    expected = _torch_same_conv(x16.astype(np.float32), w16.astype(np.float32), b16.astype(np.float32),
                                groups=2).numpy().astype(np.float16)
    # at most one float16 step apart (summation order can flip a rounding)
    np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)
    assert np.mean(out == expected) > 0.99


# ---------------------------------------------------------------------------------------------------------------
# FP16 semantics: rounding, casts, overflow and the headroom report
# ---------------------------------------------------------------------------------------------------------------


def test_fp16_result_is_rounded_where_fp32_is_not() -> None:
    body = lambda x: mb.add(x=x, y=np.float32(1e-3))  # noqa: E731
    ones = np.ones((2, 3), np.float32)
    (fp32,) = _run(_program(body, (2, 3)), ones)
    prog16 = _program(lambda x: mb.add(x=x, y=np.float16(1e-3)), (2, 3), dtype=types.fp16)
    (fp16,) = _run(prog16, ones)
    assert fp32.dtype == np.float32 and np.all(fp32 == np.float32(1) + np.float32(1e-3))
    # 1.001 is not a float16: the nearest one is 1.0009766 (steps of 2**-10 above 1)
    assert fp16.dtype == np.float16 and np.all(fp16 == np.float16(1 + 2**-10))
    assert np.all(fp16.astype(np.float32) != fp32)


def test_float32_input_is_rounded_to_an_fp16_input() -> None:
    (out,) = _run(_program(lambda x: mb.identity(x=x), (3,), dtype=types.fp16), np.full(3, 0.1, np.float32))
    assert out.dtype == np.float16 and np.all(out == np.float16(0.1))


def test_saved_fp16_program_casts_in_and_out(tmp_path: Path) -> None:
    """ct.convert FLOAT16 with the default (iOS15) target: fp32 input, cast to fp16, fp16 ops, cast back to fp32."""
    prog = _program(lambda x: mb.mul(x=mb.add(x=x, y=1.0), y=3.0), (4,))
    loaded = _roundtrip(prog, tmp_path, precision=ct.precision.FLOAT16)
    types_in_order = [op.op_type for op in loaded.functions["main"].operations if op.op_type != "const"]
    assert types_in_order[0] == "cast" and types_in_order[-1] == "cast"
    x = np.array([0.1, 1e-3, 100.0, 1.0 / 3.0], np.float32)
    run = run_program(loaded, {"x": x})
    (out,) = run.outputs.values()
    expected = ((x.astype(np.float16).astype(np.float32) + 1).astype(np.float16).astype(np.float32) * 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.astype(np.float16).astype(np.float32))
    assert [r.dtype for r in run.ops] == ["fp16"] * (len(run.ops) - 1) + ["fp32"]


def test_overflow_and_nan_are_reported_by_headroom() -> None:
    def body(x):
        big = mb.mul(x=x, y=np.float16(200.0), name="big")  # 40000: fits
        over = mb.mul(x=big, y=np.float16(2.0), name="over")  # 80000: inf in float16
        return mb.sub(x=over, y=over, name="nan")  # inf - inf

    run = run_program(_program(body, (2, 2), dtype=types.fp16), {"x": np.full((2, 2), 200.0, np.float32)})
    rows = {h.op_name: h for h in fp16_headroom(run)}
    assert rows["big"].status == "ok" and rows["big"].ratio == pytest.approx(40000 / FP16_MAX, rel=1e-3)
    assert rows["over"].status == "overflow" and rows["over"].inf_count == 4 and math.isinf(rows["over"].ratio)
    assert rows["nan"].status == "nan" and rows["nan"].nan_count == 4
    assert "OVERFLOW" in rows["over"].describe() and "4 inf values" in rows["over"].describe()
    assert "NAN" in rows["nan"].describe()
    assert [h.op_name for h in overflowing(run)] == ["over", "nan"]
    assert run.record("over").max_abs == math.inf


def test_fp32_run_shows_which_activations_would_not_fit_fp16() -> None:
    run = run_program(_program(lambda x: mb.mul(x=x, y=1000.0, name="scale"), (3,)),
                      {"x": np.array([1.0, 70.0, -2.0], np.float32)})
    (row,) = fp16_headroom(run)
    assert row.dtype == "fp32" and row.max_abs == 70000.0 and row.status == "overflow"


def test_compare_runs_finds_where_fp16_error_grows(tmp_path: Path) -> None:
    """x + 1 - 1 cancels: in fp16 the add keeps 3 significant digits of x, the sub exposes the loss."""
    def body(x):
        scaled = mb.mul(x=x, y=0.5, name="scaled")
        shifted = mb.add(x=scaled, y=1.0, name="shifted")
        return mb.sub(x=shifted, y=1.0, name="cancelled")

    x = _rand(64, low=1e-3, high=2e-3)
    ref = run_program(_program(body, (64,)), {"x": x}, trace=True)
    cand = run_program(_roundtrip(_program(body, (64,)), tmp_path, precision=ct.precision.FLOAT16), {"x": x},
                       trace=True)
    diffs = compare_runs(ref, cand)
    assert [d.op_type for d in diffs] == ["mul", "add", "sub"]  # the converter's casts are left out
    assert diffs[0].rel_err < 1e-3 and diffs[2].rel_err > 0.05
    assert first_divergence(diffs, 1e-2).op_name == "cancelled"
    assert first_divergence(diffs, 1.0) is None
    with pytest.raises(MilProgramError, match="trace=True"):
        compare_runs(run_program(_program(body, (64,)), {"x": x}), cand)


def test_records_keep_and_trace() -> None:
    prog = _program(lambda x: mb.relu(x=mb.mul(x=x, y=2.0, name="double"), name="positive"), (30, 20))
    x = _rand(30, 20)
    run = run_program(prog, {"x": x}, keep={"double"})
    assert [(r.op_type, r.op_name, r.dtype, r.shape) for r in run.ops] == [
        ("mul", "double", "fp32", (30, 20)), ("relu", "positive", "fp32", (30, 20))]
    assert run.ops[0].max_abs == pytest.approx(np.abs(2 * x).max())
    assert run.ops[1].mean_abs == pytest.approx(np.maximum(2 * x, 0).mean(), rel=1e-6)
    assert run.ops[0].sample is None and set(run.kept) == {"double"}
    np.testing.assert_array_equal(run.kept["double"], 2 * x)
    traced = run_program(prog, {"x": x}, trace=True)
    assert traced.ops[0].sample.shape == (SAMPLE_SIZE,)
    with pytest.raises(MilProgramError, match="nope"):
        run_program(prog, {"x": x}, keep={"nope"})


# ---------------------------------------------------------------------------------------------------------------
# Loud failures
# ---------------------------------------------------------------------------------------------------------------


def test_result_shape_must_match_the_declared_shape() -> None:
    """matmul of a vector with a batch of matrices: the MIL docs (and NumPy) give (2, 3), but coremltools 9 type
    inference declares (1, 3). The interpreter computes the documented result and refuses the disagreement."""
    prog = _program(lambda x, y: mb.matmul(x=x, y=y, name="vec_mat"), (4,), (2, 4, 3))
    assert prog.functions["main"].outputs[0].shape == (1, 3)
    with pytest.raises(MilProgramError, match=r"'vec_mat'\) produced shape \(2, 3\).*declares \(1, 3\)"):
        run_program(prog, {"x": _rand(4), "y": _rand(2, 4, 3)})


def test_unknown_op_is_refused_before_running() -> None:
    gamma = np.ones(3, np.float32)
    prog = _program(lambda x: mb.instance_norm(x=mb.relu(x=x), gamma=gamma, beta=gamma, name="inorm"), (1, 3, 4, 4))
    with pytest.raises(UnsupportedOpError, match=r"^unsupported MIL op 'instance_norm' \(op name 'inorm'\)$"):
        run_program(prog, {"x": _rand(1, 3, 4, 4)})
    assert issubclass(UnsupportedOpError, MilProgramError)


def test_wrong_inputs_are_refused() -> None:
    prog = _program(lambda x: mb.relu(x=x), (2, 3))
    with pytest.raises(MilProgramError, match=r"missing \['x'\]"):
        run_program(prog, {"image": _rand(2, 3)})
    with pytest.raises(MilProgramError, match=r"shape \(3, 2\)"):
        run_program(prog, {"x": _rand(3, 2)})


def test_missing_and_corrupt_packages_raise(tmp_path: Path) -> None:
    missing = tmp_path / "absent.mlpackage"
    with pytest.raises(MilProgramError, match=r"absent\.mlpackage: no such Core ML package"):
        load_program(missing)

    good = tmp_path / "good"
    good.mkdir()
    _roundtrip(_program(lambda x: mb.mul(x=x, y=_rand(64)), (64,)), good)  # weights large enough to go in weight.bin
    package = good / "prog.mlpackage"

    no_manifest = tmp_path / "no_manifest.mlpackage"
    shutil.copytree(package, no_manifest)
    (no_manifest / "Manifest.json").unlink()
    with pytest.raises(MilProgramError, match=r"no_manifest\.mlpackage: cannot read the model spec"):
        load_program(no_manifest)

    garbled = tmp_path / "garbled.mlpackage"
    shutil.copytree(package, garbled)
    (garbled / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\x08\xff\xff not a protobuf")
    with pytest.raises(MilProgramError, match=r"garbled\.mlpackage"):
        load_program(garbled)

    no_weights = tmp_path / "no_weights.mlpackage"
    shutil.copytree(package, no_weights)
    (no_weights / "Data/com.apple.CoreML/weights/weight.bin").unlink()
    with pytest.raises(MilProgramError, match=r"no_weights\.mlpackage: cannot load the ML Program"):
        load_program(no_weights)

    a_file = tmp_path / "file.mlpackage"
    a_file.write_text("")
    with pytest.raises(MilProgramError, match=r"not an \.mlpackage directory"):
        load_program(a_file)


def test_neural_network_package_is_not_an_ml_program(tmp_path: Path) -> None:
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder([("x", datatypes.Array(3))], [("y", datatypes.Array(3))])
    builder.add_activation("relu", "RELU", "x", "y")
    path = tmp_path / "nn.mlpackage"
    with _quiet():
        ct.models.MLModel(builder.spec).save(str(path))
    with pytest.raises(MilProgramError, match="holds a neuralNetwork model, not an ML Program"):
        load_program(path)


# ---------------------------------------------------------------------------------------------------------------
# EfficientFormer-L1 end to end: converted on Linux, executed here, compared with PyTorch
# ---------------------------------------------------------------------------------------------------------------

# The Core ML fold: every pass but the ONNX-only ones (erf-gelu for old opsets, token-rows-mb3d is the ONNX MB3D
# layout and excludes channels-first-mb3d) and Core AI's include-pad-pooling (Core ML computes exclude-pad pooling
# right; coremltools has no conversion for the correction's new_ones).
NOT_FOR_COREML = ("erf-gelu", "token-rows-mb3d", "include-pad-pooling")


def _convert(model: torch.nn.Module, example: torch.Tensor, path: Path, precision) -> Path:
    with _quiet():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="image", shape=tuple(example.shape))],
                             convert_to="mlprogram", compute_precision=precision,
                             minimum_deployment_target=ct.target.iOS16)
        mlmodel.save(str(path))
    return path


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _outputs(program, inputs: np.ndarray, trace: bool = False) -> tuple[np.ndarray, list]:
    runs = [run_program(program, {"image": inputs[i:i + 1]}, trace=trace) for i in range(len(inputs))]
    logits = np.concatenate([next(iter(r.outputs.values())).astype(np.float32) for r in runs])
    return logits, runs


@pytest.fixture(scope="module")
def l1(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from efexport.exporter.passes import ALL_PASSES
    from efexport.exporter.stages.fold import fold_model, fold_probe
    from efexport.exporter.stages.load import load_model
    from efexport.validate.reference import make_reference_inputs

    inputs, kinds = make_reference_inputs(0, 1, 1)
    model = load_model(None, "l1", seed=0).model.eval()
    passes = [p for p in ALL_PASSES if p not in NOT_FOR_COREML]
    folded = fold_model(model, passes, fold_probe(inputs, kinds), 1e-4).model.eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
        folded_reference = folded(torch.from_numpy(inputs)).numpy()
    out = tmp_path_factory.mktemp("l1")
    example = torch.from_numpy(inputs[:1])
    packages = {
        "fp32": _convert(model, example, out / "l1_fp32.mlpackage", ct.precision.FLOAT32),
        "fp16": _convert(model, example, out / "l1_fp16.mlpackage", ct.precision.FLOAT16),
        "folded_fp32": _convert(folded, example, out / "l1_folded_fp32.mlpackage", ct.precision.FLOAT32),
        "folded_fp16": _convert(folded, example, out / "l1_folded_fp16.mlpackage", ct.precision.FLOAT16),
    }
    return {"inputs": inputs, "reference": reference, "folded_reference": folded_reference, "packages": packages}


def test_l1_fp32_program_matches_pytorch(l1: dict) -> None:
    program = load_program(l1["packages"]["fp32"])
    logits, runs = _outputs(program, l1["inputs"])
    assert np.abs(logits - l1["reference"]).max() <= 1e-4
    assert all(h.status == "ok" for run in runs for h in fp16_headroom(run))


def test_l1_fp16_program_keeps_predictions(l1: dict) -> None:
    fp16 = load_program(l1["packages"]["fp16"])
    fn = fp16.functions["main"]
    # iOS16 + FLOAT16: the input and output themselves are fp16, so no casts at all
    assert {types.builtin_to_string(v.dtype) for v in fn.inputs.values()} == {"fp16"}
    assert all(op.op_type != "cast" for op in fn.operations)
    logits, runs16 = _outputs(fp16, l1["inputs"], trace=True)
    for got, want in zip(logits, l1["reference"], strict=True):
        assert _cosine(got, want) >= 0.9995
        assert got.argmax() == want.argmax()
    assert not any(overflowing(run) for run in runs16)

    # op-by-op against the FP32 program: every op aligned despite the renaming, none drifting past 5 %
    _, runs32 = _outputs(load_program(l1["packages"]["fp32"]), l1["inputs"][:1], trace=True)
    diffs = compare_runs(runs32[0], runs16[0])
    assert len(diffs) == len(runs32[0].ops) == len(runs16[0].ops)
    assert first_divergence(diffs, 0.05) is None
    assert first_divergence(diffs, 1e-6) is not None  # FP16 does lose precision somewhere


def test_l1_folded_channels_first_program(l1: dict) -> None:
    fp32 = load_program(l1["packages"]["folded_fp32"])
    ops = list(fp32.functions["main"].operations)
    kinds = Counter(op.op_type for op in ops)
    # the channels-first MB3D form: the ops this variant exists to exercise
    assert kinds["concat"] and kinds["split"] and not kinds["transpose"]
    assert any(op.op_type == "layer_norm" and list(op.axes.val) == [1] for op in ops)
    assert any(op.op_type == "matmul" and bool(op.transpose_x.val) for op in ops)
    assert any(op.op_type == "matmul" and bool(op.transpose_y.val) for op in ops)

    logits, _ = _outputs(fp32, l1["inputs"])
    assert np.abs(logits - l1["folded_reference"]).max() <= 1e-4
    logits16, _ = _outputs(load_program(l1["packages"]["folded_fp16"]), l1["inputs"])
    for got, want in zip(logits16, l1["reference"], strict=True):
        assert _cosine(got, want) >= 0.9995
        assert got.argmax() == want.argmax()


@pytest.mark.skipif(not os.environ.get("EFEXPORT_TIME_L3"), reason="set EFEXPORT_TIME_L3=1 (converting L3 takes ~25 s)")
def test_time_l3_fp16_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Reports how long an EfficientFormer-L3 FP16 program takes here; no bound asserted (machines differ)."""
    from efexport.exporter.stages.load import load_model
    from efexport.validate.reference import make_reference_inputs

    inputs, _ = make_reference_inputs(0, 1, 0)
    model = load_model(None, "l3", seed=0).model.eval()
    program = load_program(_convert(model, torch.from_numpy(inputs), tmp_path / "l3.mlpackage", ct.precision.FLOAT16))
    start = time.perf_counter()
    run = run_program(program, {"image": inputs})
    seconds = time.perf_counter() - start
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()[0]
    logits = next(iter(run.outputs.values())).astype(np.float32)[0]
    assert _cosine(logits, reference) >= 0.9995
    with capsys.disabled():
        print(f"\nEfficientFormer-L3 FP16 program: {len(run.ops)} op outputs in {seconds:.2f} s")
