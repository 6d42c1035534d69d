"""``efexport tensorrt --precision int8``: explicit quantization. The prepared ONNX carries symmetric int8 Q/DQ pairs
(what TensorRT's explicit quantization takes), proven on ONNX Runtime, and ``build_engine.sh`` builds a strongly
typed engine from it (implicit INT8 calibration is deprecated since TensorRT 10.1). The engine build itself needs
TensorRT and a GPU, which this machine lacks: the run ends with exit 8 and the portable half, as for float."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from efexport.exporter.targets.tensorrt.prepare import check_ops
from tests.helpers import edited_recipe, run_cli
from tests.test_calibration import photo_crops

pytestmark = pytest.mark.xdist_group("int8-tensorrt")


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("trt-int8")
    photos = photo_crops(work / "photos", per_photo=2)
    # a gate that only asks for a positively correlated output: this test is about the package's form
    recipe = edited_recipe("tensorrt", work, ("min_cosine = 0.995", "min_cosine = 0.01"),
                           ("min_top1_agreement = 0.9\n", ""))
    with recipe.open("a") as table:
        table.write('\n[quantization]\nsamples = 10\nheld_out = 6\nsensitivity = false\nselection_margin = 1.0\n'
                    'keep_float = ["stem", "head"]\n')
    done = run_cli("tensorrt", "--variant", "l1", "--precision", "int8", "--calibration", photos,
                   "--recipe", recipe, "--out", work / "out", "--json")
    assert done.returncode == 8, done.stderr[-3000:]  # the portable half: no TensorRT here
    package = work / "out" / "efficientformer-l1" / "tensorrt-int8"
    return package, json.loads((package / "manifest.json").read_text())


def test_the_prepared_onnx_carries_symmetric_int8_qdq_pairs(int8_package: tuple[Path, dict]) -> None:
    package, manifest = int8_package
    model = onnx.load(package / "model.onnx")
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) > 10
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [initializers[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # TensorRT: zero point 0
    check_ops(model)  # every node, Q/DQ included, is one TensorRT's parser takes
    assert manifest["target"]["tensorrt_op_support"]["ops"].count("QuantizeLinear") == 1
    assert manifest["quantization"]["quantizer"]["activations"].startswith("int8, symmetric")


def test_the_build_is_strongly_typed(int8_package: tuple[Path, dict]) -> None:
    package, manifest = int8_package
    script = (package / "build_engine.sh").read_text()
    assert "--stronglyTyped" in script and "--int8" not in script and "--layerPrecisions" not in script
    target = manifest["target"]
    assert target["build_options"]["precision"] == "int8" and target["build_options"]["fp32_layers"] == []
    assert "--stronglyTyped" in target["trtexec"]
    assert target["engine"]["built"] is False


def test_the_int8_gate_ran_on_the_prepared_onnx_and_verify_repeats_it(int8_package: tuple[Path, dict]) -> None:
    package, manifest = int8_package
    assert manifest["parity"]["passed"] and manifest["parity"]["tolerances"]["min_cosine"] == 0.01
    assert manifest["quantization"]["float_groups"] == ["stem", "head"]
    done = run_cli("verify", package, "--json")
    assert done.returncode == 0, done.stdout[-2000:]
    assert json.loads(done.stdout)["parity"]["tolerances"]["min_cosine"] == 0.01
