"""Apple's Core AI runtime on single layers: the pooling defect the Core AI target works around, shown on a bare
layer so that we notice when Apple fixes it (this test then fails, and ``include-pad-pooling`` can leave
recipes/coreai.toml), and the include-pad form that the fold pass puts in its place, computed right.

Each layer is captured, converted by the Core AI target's own ``convert`` and run by its parity runner: the
path every Core AI package takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from efexport.exporter.passes.include_pad_pooling import CorrectedAvgPool
from efexport.exporter.stages.capture import capture
from efexport.exporter.targets.coreai.convert import convert, quiet_converters
from efexport.validate.coreai_runtime import CoreAIRunner

SIZE = 14  # corners, edges and inside: every divisor of a 3x3 window
INPUTS = np.random.default_rng(7).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _on_runtime(layer: nn.Module, folder: Path, precision: str = "fp32") -> np.ndarray:
    """The layer's outputs on INPUTS, computed by Apple's Core AI runtime from a converted asset."""
    path = folder / "layer.aimodel"
    program = convert(capture(layer.eval(), SIZE, 1, dynamic_batch=False), precision)
    with quiet_converters():
        program.save_asset(path)
    runner = CoreAIRunner(path)
    try:
        return runner(INPUTS).reshape(INPUTS.shape)
    finally:
        runner.close()


def _pool(include_pad: bool) -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=include_pad)


def test_core_ai_still_computes_exclude_pad_pooling_as_include_pad(tmp_path: Path) -> None:
    """The defect (coreai-torch 0.4.3, coreai-core 1.0.0b3): AvgPool2d(3, 1, 1, count_include_pad=False) comes out
    as the include-pad mean. When this fails, Apple fixed it: drop include-pad-pooling from recipes/coreai.toml."""
    got = _on_runtime(_pool(include_pad=False), tmp_path)
    with torch.no_grad():
        wanted = _pool(include_pad=False)(torch.from_numpy(INPUTS)).numpy()
        include_pad = _pool(include_pad=True)(torch.from_numpy(INPUTS)).numpy()
    assert np.abs(got - wanted).max() > 0.1  # wrong at the borders (the corners' mean is off by 9/4)
    assert np.abs(got - include_pad).max() <= 1e-6  # exactly what include-pad pooling gives


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_include_pad_form_is_computed_right(tmp_path: Path, precision: str) -> None:
    got = _on_runtime(CorrectedAvgPool(_pool(include_pad=False)), tmp_path, precision)
    with torch.no_grad():
        wanted = _pool(include_pad=False)(torch.from_numpy(INPUTS)).numpy()
    # float16 keeps 11 significant bits: the inputs are about 1, the means below 4
    assert np.abs(got - wanted).max() <= (1e-6 if precision == "fp32" else 4e-3)


def test_the_runner_refuses_an_asset_with_other_names(tmp_path: Path) -> None:
    """The runner feeds ``image`` and reads ``logits``: an asset with other names is refused by name, not fed
    something else."""
    import coreai_torch

    path = tmp_path / "other.aimodel"
    layer = nn.Identity()
    with quiet_converters():
        program = torch.export.export(layer, (torch.zeros(1, 3, 4, 4),), strict=False)
        program = program.run_decompositions(coreai_torch.get_decomp_table())
        converted = coreai_torch.TorchConverter().add_exported_program(program, input_names=["x"],
                                                                       output_names=["y"]).to_coreai()
        converted.save_asset(path)
    with pytest.raises(RuntimeError, match=r"takes \['x'\] and returns \['y'\]"):
        CoreAIRunner(path)(np.zeros((1, 3, 4, 4), dtype=np.float32))
