from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

from efexport.exporter.models.efficientformer import TOKENS_CHANNELS_FIRST
from efexport.exporter.passes import ChannelsFirstMB3D
from efexport.exporter.passes.channels_first_mb3d import MetaBlock3dChannelsFirst
from efexport.exporter.recipes import default_recipe_path, load_recipe
from tests.helpers import error_vs_exact, realistic_model, with_passes

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(13))
# the Core ML recipe's passes before the channels-first form (carry-mixer-scale and token-rows-mb3d are ONNX's)
OTHER_PASSES = [name for name in load_recipe(default_recipe_path("coreml"))[0].fold.passes
               if name != "channels-first-mb3d"]


def _coreml_ops(model: torch.nn.Module) -> Counter:
    import coremltools as ct

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), IMAGES[:1], check_trace=False)
        program = ct.convert(traced, inputs=[ct.TensorType(name="image", shape=(1, 3, 224, 224))],
                             convert_to="milinternal", minimum_deployment_target=ct.target.iOS16)
    return Counter(op.op_type for op in program.functions["main"].operations)


@pytest.mark.parametrize("before", [[], OTHER_PASSES], ids=["unfolded", "after-other-passes"])
def test_channels_first_form_keeps_outputs(before: list[str]) -> None:
    model = realistic_model("l1")
    folded = with_passes(model, before)
    result = ChannelsFirstMB3D()(folded)
    assert result.changed and result.rewrites == 1 and folded.token_layout == TOKENS_CHANNELS_FIRST
    assert isinstance(folded.stages[3].blocks[4], MetaBlock3dChannelsFirst)
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5
    assert not ChannelsFirstMB3D()(folded).changed


def test_coreml_program_has_no_transpose_and_one_reshape() -> None:
    model = realistic_model("l3")
    plain = _coreml_ops(with_passes(model, OTHER_PASSES))
    channels_first = _coreml_ops(with_passes(model, [*OTHER_PASSES, "channels-first-mb3d"]))
    assert plain["transpose"] > 0  # the (B, N, C) form needs them; the point of the pass is that it does not
    assert channels_first["transpose"] == 0
    assert channels_first["reshape"] == 1
    assert channels_first["layer_norm"] == 4 * 2 + 1 and channels_first["batch_norm"] == 0
