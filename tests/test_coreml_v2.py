"""EfficientFormerV2 for Core ML: the converted s0 program's layout and its FP16 parity, through the interpreter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from efexport.exporter.recipes import default_recipe_path, load_recipe
from efexport.exporter.stages.capture import capture
from efexport.exporter.targets.coreml.convert import MilInterpreterRunner, convert, read_labels
from efexport.validate.coreml_io import quiet_coremltools
from efexport.validate.mil_interpreter import FP16_MAX
from efexport.validate.reference import make_reference_inputs, pytorch_outputs
from tests.helpers import with_passes
from tests.helpers_v2 import realistic_model_v2


@pytest.fixture(scope="module")
def s0_fp16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Counter, MilInterpreterRunner, torch.nn.Module]:
    """s0 with realistic weights, folded by the shipped Core ML recipe, converted to FP16 (image input,
    classifier) and saved; the op counts of its program and an interpreter runner for it."""
    recipe, _ = load_recipe(default_recipe_path("coreml"))
    model = realistic_model_v2("s0")
    folded = with_passes(model, list(recipe.fold.passes))
    mlmodel = convert(capture(folded, 224, 1000, dynamic_batch=False), recipe, read_labels("imagenet-1k", 1000),
                      "fp16")
    ops = Counter(op.op_type for op in mlmodel._mil_program.functions["main"].operations if op.op_type != "const")
    path = tmp_path_factory.mktemp("coreml-v2") / "model.mlpackage"
    with quiet_coremltools():
        mlmodel.save(str(path))
    return ops, MilInterpreterRunner(Path(path), threads=1), model


def test_s0_program_has_no_transpose_and_a_reshape_in_and_out_per_attention(s0_fp16) -> None:
    ops, _, _ = s0_fp16
    assert ops["transpose"] == 0
    assert ops["reshape"] <= 10  # 5 attentions (4 blocks, 1 downsample), one reshape into heads and one out
    assert ops["upsample_bilinear"] == 2  # stage 2's attentions: the op the interpreter learned for V2


def test_s0_fp16_parity_through_the_interpreter(s0_fp16) -> None:
    _, runner, model = s0_fp16
    inputs, _ = make_reference_inputs(seed=0, noise_inputs=1, image_inputs=2)
    want = pytorch_outputs(model, inputs).astype(np.float64)
    got = runner(inputs).astype(np.float64)
    cosine = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9995
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    execution = runner.report()["reference_execution"]
    assert not execution["fp16_overflow"]
    assert execution["fp16_largest_activations"][0]["max_abs"] < FP16_MAX / 100  # far from the limit
