"""The ML Program interpreter's quantized ops (validate.mil_interpreter) against hand-computed NumPy results:
iOS17 quantize/dequantize, iOS16 constexpr_affine_dequantize and constexpr_lut_to_dense (packed indices), iOS18
constexpr_blockwise_shift_scale and constexpr_lut_to_dense (per-block tables). Each op in memory, and after a
save and load_program (the on-disk form: packed bytes, sub-byte dtypes)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from efexport.validate.mil_interpreter import KERNELS, load_program, run_program

# the ops this file checks (test_mil_interpreter's coverage test counts them as covered)
COVERED_OPS = ("quantize", "dequantize", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
               "constexpr_lut_to_dense")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _program(body, shape: tuple[int, ...], opset, dtype=types.fp32):
    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=dtype)], opset_version=opset)
    def main(x):
        return body(x)

    return main


def _outputs(prog, x: np.ndarray) -> np.ndarray:
    run = run_program(prog, {"x": x})
    return next(iter(run.outputs.values()))


def _saved(prog, tmp_path: Path, target) -> object:
    with _quiet():
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                           compute_precision=ct.precision.FLOAT32)
        path = tmp_path / "model.mlpackage"
        model.save(str(path))
    return load_program(path)


def test_the_covered_ops_are_the_interpreters_quantized_kernels() -> None:
    assert set(COVERED_OPS) <= set(KERNELS)
    assert {op for op in KERNELS if op.startswith("constexpr_") or op.endswith("quantize")} == set(COVERED_OPS)


# --- quantize / dequantize (iOS17) -------------------------------------------------------------------------------

X = np.array([[-1.30, -0.25, 0.25, 0.75], [2.50, -3.10, 10.0, 0.05]], dtype=np.float32)


def test_quantize_per_tensor_rounds_half_to_even_and_clips_uint8() -> None:
    prog = _program(lambda x: mb.quantize(input=x, scale=np.float32(0.5), zero_point=np.uint8(3),
                                          output_dtype="uint8"), X.shape, ct.target.iOS17)
    # x / 0.5 = [-2.6, -0.5, 0.5, 1.5], [5, -6.2, 20, 0.1]; half to even: -0.5 -> -0, 0.5 -> 0, 1.5 -> 2
    expected = np.array([[-3 + 3, 0 + 3, 0 + 3, 2 + 3], [5 + 3, -6 + 3, 20 + 3, 0 + 3]])
    expected = np.clip(expected, 0, 255).astype(np.uint8)  # -6 + 3 = -3 clips to 0
    out = _outputs(prog, X)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 3, 3, 5], [8, 0, 23, 3]])
    np.testing.assert_array_equal(out, expected)


def test_quantize_per_channel_with_a_negative_zero_point_clips_int8() -> None:
    scale = np.array([0.01, 0.1], dtype=np.float32)
    zero_point = np.array([-3, 5], dtype=np.int8)
    prog = _program(lambda x: mb.quantize(input=x, scale=scale, zero_point=zero_point, axis=0,
                                          output_dtype="int8"), X.shape, ct.target.iOS17)
    # row 0 / 0.01 = [-130, -25, 25, 75] - 3 -> [-133 -> -128, -28, 22, 72]
    # row 1 / 0.1 = [25, -31, 100, 0.5 -> 0] + 5 -> [30, -26, 105, 5]
    np.testing.assert_array_equal(_outputs(prog, X), np.array([[-128, -28, 22, 72], [30, -26, 105, 5]], np.int8))


def test_quantize_without_zero_point_along_the_last_axis() -> None:
    scale = np.array([1.0, 0.5, 0.25, 2.0], dtype=np.float32)
    prog = _program(lambda x: mb.quantize(input=x, scale=scale, axis=-1, output_dtype="int8"), X.shape,
                    ct.target.iOS17)
    # columns: /1, /0.5, /0.25, /2: [-1.3, -0.5, 1, 0.375], [2.5, -6.2, 40, 0.025]
    np.testing.assert_array_equal(_outputs(prog, X), np.array([[-1, 0, 1, 0], [2, -6, 40, 0]], np.int8))


def test_dequantize_per_channel_with_a_negative_zero_point() -> None:
    q = np.array([[-128, -28, 22, 72], [30, -26, 105, 5]], dtype=np.int8)
    scale = np.array([0.01, 0.1], dtype=np.float32)
    zero_point = np.array([-3, 5], dtype=np.int8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.dequantize(input=mb.const(val=q), scale=scale, zero_point=zero_point, axis=0), x

    expected = np.array([[(-128 + 3) * 0.01, (-28 + 3) * 0.01, (22 + 3) * 0.01, (72 + 3) * 0.01],
                         [(30 - 5) * 0.1, (-26 - 5) * 0.1, (105 - 5) * 0.1, (5 - 5) * 0.1]], np.float32)
    out = run_program(prog, {"x": np.zeros(1, np.float32)}).outputs
    np.testing.assert_allclose(next(iter(out.values())), expected, rtol=1e-6)


def test_a_quantize_dequantize_pair_survives_saving(tmp_path: Path) -> None:
    """The pair coremltools' activation passes insert, uint8 with a zero point, FP16 activations, saved and read
    back: the value grid is scale-spaced and clipped to the calibrated range."""
    scale, zero_point = np.float16(0.05), np.uint8(128)

    def body(x):
        q = mb.quantize(input=x, scale=scale, zero_point=zero_point, output_dtype="uint8")
        return mb.dequantize(input=q, scale=scale, zero_point=zero_point)

    prog = _program(body, X.shape, ct.target.iOS17, dtype=types.fp16)
    loaded = _saved(prog, tmp_path, ct.target.iOS17)
    x16 = X.astype(np.float16)
    q = np.clip(np.around(x16.astype(np.float32) / np.float32(scale)) + 128, 0, 255)
    expected = ((q - 128) * np.float32(scale)).astype(np.float16)
    for program in (prog, loaded):
        out = _outputs(program, x16)
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, expected)
    assert float(expected.max()) == pytest.approx(127 * 0.05, rel=1e-3)  # 10.0 clipped at the top of the grid


# --- weights: constexpr ops --------------------------------------------------------------------------------------

W_Q = np.array([[[-128, 0], [3, 127]], [[-5, 7], [100, -100]], [[1, 2], [3, 4]]], dtype=np.int8)  # (3, 2, 2)


def _weight_program(make_weight, opset):
    """x (1, 2) @ weight[i] for each i: the weight is read through the op under test (a const to the kernel)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1), dtype=types.fp32)], opset_version=opset)
    def prog(x):
        weight = make_weight()
        return mb.mul(x=weight, y=x if weight.rank == 2 else mb.expand_dims(x=x, axes=[0]))

    return prog


def _weight(prog) -> np.ndarray:
    return next(iter(run_program(prog, {"x": np.ones((1, 1), np.float32)}).outputs.values()))


def test_constexpr_affine_dequantize_per_output_channel_with_negative_zero_points(tmp_path: Path) -> None:
    scale = np.array([0.5, 0.25, 2.0], dtype=np.float32)
    zero_point = np.array([-2, 3, 0], dtype=np.int8)
    prog = _weight_program(lambda: mb.constexpr_affine_dequantize(
        quantized_data=W_Q, scale=scale, zero_point=zero_point, axis=0), ct.target.iOS16)
    expected = np.array([[[(-128 + 2) * 0.5, (0 + 2) * 0.5], [(3 + 2) * 0.5, (127 + 2) * 0.5]],
                         [[(-5 - 3) * 0.25, (7 - 3) * 0.25], [(100 - 3) * 0.25, (-100 - 3) * 0.25]],
                         [[2.0, 4.0], [6.0, 8.0]]], np.float32)
    np.testing.assert_array_equal(_weight(prog), expected)
    np.testing.assert_array_equal(_weight(_saved(prog, tmp_path, ct.target.iOS16)), expected)


def test_constexpr_affine_dequantize_along_a_later_axis_with_uint8() -> None:
    q = np.array([[0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    scale = np.array([1.0, 0.5, 0.25], dtype=np.float32)
    zero_point = np.array([0, 128, 255], dtype=np.uint8)
    prog = _weight_program(lambda: mb.constexpr_affine_dequantize(
        quantized_data=q, scale=scale, zero_point=zero_point, axis=1), ct.target.iOS16)
    np.testing.assert_array_equal(_weight(prog), [[0.0, 0.0, 0.0], [10.0, (20 - 128) * 0.5, (30 - 255) * 0.25]])


def test_constexpr_blockwise_shift_scale_blocks_and_offsets(tmp_path: Path) -> None:
    data = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    scale = np.array([[0.5, 2.0], [1.0, 0.25]], dtype=np.float32)  # 2x2 blocks of 2x2
    offset = np.array([[-1, 0], [2, -3]], dtype=np.int8)
    prog = _weight_program(lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset),
                           ct.target.iOS18)
    expected = np.empty((4, 4), np.float32)
    for i in range(4):
        for j in range(4):
            expected[i, j] = scale[i // 2, j // 2] * (data[i, j] - offset[i // 2, j // 2])
    np.testing.assert_array_equal(_weight(prog), expected)
    np.testing.assert_array_equal(_weight(_saved(prog, tmp_path, ct.target.iOS18)), expected)


def test_constexpr_blockwise_shift_scale_per_channel_without_offset() -> None:
    data = np.array([[1, -2, 3], [4, 5, -6]], dtype=np.int8)
    scale = np.array([[0.5], [3.0]], dtype=np.float32)
    prog = _weight_program(lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale), ct.target.iOS18)
    np.testing.assert_array_equal(_weight(prog), [[0.5, -1.0, 1.5], [12.0, 15.0, -18.0]])


def _pack(indices: np.ndarray, nbits: int) -> np.ndarray:
    """Hand-packed: index i's bits at positions i*nbits .. (i+1)*nbits - 1, least significant bit first."""
    bits = [(int(v) >> b) & 1 for v in indices.reshape(-1) for b in range(nbits)]
    bits += [0] * (-len(bits) % 8)
    return np.array([sum(bit << k for k, bit in enumerate(bits[i:i + 8])) for i in range(0, len(bits), 8)],
                    dtype=np.uint8)


def test_constexpr_lut_to_dense_ios16_unpacks_6_bit_indices(tmp_path: Path) -> None:
    lut = (np.arange(64, dtype=np.float32) - 32) / 8
    indices = np.array([0, 63, 5, 32, 17, 1, 62, 40, 9, 33, 2, 60], dtype=np.uint8)  # 12 x 6 bits = 9 bytes
    packed = _pack(indices, 6)
    assert packed.size == 9
    prog = _weight_program(lambda: mb.constexpr_lut_to_dense(indices=packed, lut=lut,
                                                             shape=np.array([3, 2, 2], np.uint32)), ct.target.iOS16)
    expected = lut[indices].reshape(3, 2, 2)
    np.testing.assert_array_equal(_weight(prog), expected)
    np.testing.assert_array_equal(_weight(_saved(prog, tmp_path, ct.target.iOS16)), expected)


def test_constexpr_lut_to_dense_ios16_two_bit_packing_by_hand() -> None:
    """The op definition's own example: indices [0, 3, 2, 1, 3] in 2 bits are the bytes 0b01101100, 0b00000011."""
    lut = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)
    packed = np.array([0b01101100, 0b00000011], dtype=np.uint8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,), dtype=types.fp32)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.mul(x=mb.constexpr_lut_to_dense(indices=packed, lut=lut, shape=np.array([5], np.uint32)), y=x)

    out = next(iter(run_program(prog, {"x": np.ones(1, np.float32)}).outputs.values()))
    np.testing.assert_array_equal(out, [10.0, 40.0, 30.0, 20.0, 40.0])


def test_constexpr_lut_to_dense_ios18_one_table_per_block_of_rows(tmp_path: Path) -> None:
    indices = np.array([[0, 3], [1, 2], [3, 3], [2, 0]], dtype=types.np_uint2_dtype)  # (4, 2), 2-bit indices
    lut = np.array([[[1.0], [2.0], [3.0], [4.0]], [[-1.0], [-2.0], [-3.0], [-4.0]]], np.float32)  # (2, 1, 4, 1)
    lut = lut.reshape(2, 1, 4, 1)
    prog = _weight_program(lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut), ct.target.iOS18)
    expected = np.array([[1.0, 4.0], [2.0, 3.0], [-4.0, -4.0], [-3.0, -1.0]], np.float32)  # rows 2-3: table 1
    np.testing.assert_array_equal(_weight(prog), expected)
    np.testing.assert_array_equal(_weight(_saved(prog, tmp_path, ct.target.iOS18)), expected)


def test_constexpr_lut_to_dense_ios18_vector_entries_along_an_axis() -> None:
    indices = np.array([[0, 1], [1, 0]], dtype=types.np_uint1_dtype)  # (2, 2)
    lut = np.array([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]], np.float32).reshape(1, 1, 2, 3)
    prog = _weight_program(lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut, vector_axis=0),
                           ct.target.iOS18)
    # each index becomes 3 values down axis 0: output (6, 2)
    expected = np.array([[10, 20], [11, 21], [12, 22], [20, 10], [21, 11], [22, 12]], np.float32)
    np.testing.assert_array_equal(_weight(prog), expected)
