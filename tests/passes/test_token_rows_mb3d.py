from __future__ import annotations

import copy
from collections import Counter

import onnx
import pytest
import torch

from efexport.exporter.models.efficientformer import TOKEN_ROWS
from efexport.exporter.passes import ChannelsFirstMB3D, TokenRowsMB3D
from efexport.exporter.passes.token_rows_mb3d import AttentionOnTokenRows, FlatTokenRows
from efexport.exporter.stages.capture import capture
from efexport.exporter.targets.onnx.export import export_onnx
from tests.helpers import error_vs_exact, realistic_model, with_passes

IMAGES = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(15))
OTHER_PASSES = ["fuse-conv-bn", "fold-layer-scale", "blend-pool-mixer", "constant-attention-bias",
                "fold-attention-scale", "merge-heads"]


@pytest.mark.parametrize("before", [[], OTHER_PASSES], ids=["unfolded", "after-other-passes"])
def test_token_rows_keep_outputs(before: list[str]) -> None:
    model = realistic_model("l1")
    folded = with_passes(model, before)
    result = TokenRowsMB3D()(folded)
    assert result.changed and result.rewrites == 1 and folded.token_layout == TOKEN_ROWS
    assert isinstance(folded.stages[3].blocks[3], FlatTokenRows)
    assert isinstance(folded.stages[3].blocks[4].token_mixer, AttentionOnTokenRows)
    with torch.no_grad():
        assert error_vs_exact(folded, model, IMAGES) <= 1e-5


def test_exact_in_float64() -> None:
    model = copy.deepcopy(realistic_model("l1")).double()
    x = IMAGES.double()
    with torch.no_grad():
        expected = model(x)
        TokenRowsMB3D()(model)
        assert torch.allclose(model(x), expected, atol=1e-10)


def test_onnx_graph_loses_the_reshapes_around_each_linear(tmp_path) -> None:
    model = with_passes(realistic_model("l3"), OTHER_PASSES)  # l3: four MB3D blocks
    counts = {}
    for name, candidate in (("bnc", model), ("rows", with_passes(model, ["token-rows-mb3d"]))):
        path = tmp_path / f"{name}.onnx"
        export_onnx(capture(candidate, 224, 1000, dynamic_batch=True), path, 17, "onnxsim")
        counts[name] = Counter(node.op_type for node in onnx.load(path).graph.node)
    # every Linear one Gemm (four per block, and the head); MatMul only for the attention products
    assert counts["rows"]["Gemm"] == 4 * 4 + 1 and counts["rows"]["MatMul"] == 4 * 2
    # per block: two reshapes for the heads; plus one at the switch and one before the token mean
    assert counts["rows"]["Reshape"] == 4 * 2 + 2
    assert not {"Shape", "Slice", "Concat", "Gather"} & set(counts["rows"])
    assert counts["bnc"].total() - counts["rows"].total() >= 4 * 4 - 1


def test_channels_first_form_does_not_apply_on_top() -> None:
    model = with_passes(realistic_model("l1"), ["token-rows-mb3d"])
    assert not ChannelsFirstMB3D()(model).changed
    assert not TokenRowsMB3D()(model).changed
