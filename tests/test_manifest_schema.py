"""The manifest schema (efexport.manifest/3) against real manifests of every target, and the mistakes it catches,
each reported with the JSON path where it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import MANIFEST_SCHEMA
from efexport.exporter.manifest_schema import SCHEMA_FILE, SCHEMA_ID, check_manifest, manifest_schema, schema_problems

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

SHA = "0123456789abcdef" * 4




def _at(problems: list[str], path: str) -> list[str]:
    """The problems reported at exactly ``path``."""
    return [p for p in problems if p.startswith(f"{path}: ")]


def test_the_schema_is_a_versioned_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID == "https://efexport.invalid/schemas/efexport.manifest-3.schema.json"
    assert schema["title"] and schema["description"]
    assert schema["properties"]["schema"] == {"const": MANIFEST_SCHEMA}
    assert schema["additionalProperties"] is False
    assert manifest_schema() is manifest_schema()  # read once


def test_real_manifests_follow_the_schema(real: tuple[str, Path, dict]) -> None:
    target, path, manifest = real
    assert manifest["target"]["format"] == target
    assert schema_problems(manifest) == []
    check_manifest(manifest, str(path))  # does not raise


def test_every_real_file_entry_is_checked(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    first = next(iter(manifest["files"]))
    manifest["files"][first]["bytes"] = "many"
    assert schema_problems(manifest) == [f"files/{first}/bytes: 'many' is not of type 'integer'"]


def test_a_missing_top_level_key_is_named(onnx: dict) -> None:
    del onnx["parity"]
    assert schema_problems(onnx) == ["parity: required key is missing"]


def test_a_wrong_type_is_named_with_its_path(onnx: dict) -> None:
    onnx["parity"]["max_abs"] = "0.00001"
    assert schema_problems(onnx) == ["parity/max_abs: '0.00001' is not of type 'number'"]


def test_a_bad_file_hash_is_named_with_the_file(onnx: dict) -> None:
    onnx["files"]["model.onnx"]["sha256"] = "xyz"
    assert schema_problems(onnx) == ["files/model.onnx/sha256: 'xyz' does not match '^[0-9a-f]{64}$'"]
    onnx["files"]["model.onnx"]["sha256"] = SHA.upper()  # hex, but not lowercase
    assert _at(schema_problems(onnx), "files/model.onnx/sha256")


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/../../x", "a\\b.onnx", "./model.onnx",
                                  "a//b", "C:/model.onnx", ".."])
def test_file_paths_must_stay_inside_the_package(onnx: dict, name: str) -> None:
    onnx["files"][name] = {"sha256": SHA, "bytes": 1}
    problems = schema_problems(onnx)
    assert len(problems) == 1 and problems[0].startswith(f"files/{name}: key '"), problems


@pytest.mark.parametrize("name", ["model.onnx", "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
                                  "..hidden", "a..b", ".timing.cache", "README.md"])
def test_ordinary_file_paths_are_accepted(onnx: dict, name: str) -> None:
    onnx["files"][name] = {"sha256": SHA, "bytes": 0}
    assert schema_problems(onnx) == []


def test_file_entries_are_closed_and_the_table_not_empty(onnx: dict) -> None:
    onnx["files"]["model.onnx"]["size"] = 3
    assert schema_problems(onnx) == ["files/model.onnx/size: unknown key (not allowed here)"]
    onnx["files"] = {}
    assert _at(schema_problems(onnx), "files") == ["files: {} should be non-empty"]


def test_published_figures_must_say_they_are_published(onnx: dict) -> None:
    onnx["model"]["published"]["status"] = "measured"
    assert schema_problems(onnx) == ["model/published/status: 'published, not measured here' was expected"]
    del onnx["model"]["published"]["source"]
    assert "model/published/source: required key is missing" in schema_problems(onnx)


def test_an_unknown_top_level_key_is_refused(onnx: dict) -> None:
    onnx["latnecy"] = onnx["latency"]
    assert schema_problems(onnx) == ["latnecy: unknown key (not allowed here)"]


def test_latency_entries_are_checked(onnx: dict) -> None:
    assert onnx["latency"], "the ONNX export times ONNX Runtime here"
    onnx["latency"][0]["measured"] = "wall"
    onnx["latency"][0]["stats_ms"]["p50"] = -1.0
    onnx["latency"][0]["batch_size"] = 0
    del onnx["latency"][0]["device"]
    assert schema_problems(onnx) == [
        "latency/0/batch_size: 0 is less than the minimum of 1",
        "latency/0/device: required key is missing",
        "latency/0/measured: 'wall' is not one of ['host_end_to_end', 'device_compute']",
        "latency/0/stats_ms/p50: -1.0 is less than the minimum of 0",
    ]


def test_latency_threads_may_be_null_but_not_zero(onnx: dict) -> None:
    onnx["latency"][0]["threads"] = None  # Core ML and GPUs schedule their own threads
    assert schema_problems(onnx) == []
    onnx["latency"][0]["threads"] = 0
    assert schema_problems(onnx) == ["latency/0/threads: 0 is less than the minimum of 1"]


def test_an_empty_latency_needs_a_note(onnx: dict) -> None:
    onnx["latency"] = []
    assert schema_problems(onnx) == ["latency_note: required key is missing"]
    onnx["latency_note"] = "nothing runs here"
    assert schema_problems(onnx) == []


def test_a_package_name_for_an_unknown_variant_is_refused(onnx: dict) -> None:
    onnx["package"]["name"] = "efficientformer-l2-onnx-fp32"
    problems = _at(schema_problems(onnx), "package/name")
    assert problems and all("'efficientformer-l2-onnx-fp32' does not match" in p for p in problems)


def test_the_package_name_must_match_variant_format_and_precision(onnx: dict) -> None:
    onnx["package"]["name"] = "efficientformer-l3-coreml-fp16"
    problems = schema_problems(onnx)
    assert {p.split(" does not match ")[1] for p in problems} == {"'^efficientformer-l1-'", "'-onnx-[a-z0-9]+$'",
                                                                   "'-fp32$'"}
    assert all(p.startswith("package/name: ") for p in problems)


def test_random_init_weights_cannot_be_deployable(onnx: dict) -> None:
    onnx["package"]["deployable"] = True
    onnx["package"]["not_deployable_because"] = []
    assert schema_problems(onnx) == ["package/deployable: False was expected"]


def test_checkpoint_weights_are_accepted_and_checked(onnx: dict) -> None:
    onnx["weights"] = {"source": "checkpoint", "file": "l1.pth", "sha256": SHA, "format": "pth", "layout": "upstream"}
    onnx["package"] |= {"deployable": True, "not_deployable_because": []}
    assert schema_problems(onnx) == []
    onnx["weights"]["sha256"] = "abc"
    onnx["weights"]["layout"] = "keras"
    assert schema_problems(onnx) == ["weights/layout: 'keras' is not one of ['upstream', 'timm']",
                                     "weights/sha256: 'abc' does not match '^[0-9a-f]{64}$'"]


def test_random_init_weights_need_an_integer_seed(onnx: dict) -> None:
    onnx["weights"]["seed"] = "0"
    assert schema_problems(onnx) == ["weights/seed: '0' is not of type 'integer'"]
    onnx["weights"] = {"source": "downloaded"}
    assert "weights/source: 'downloaded' is not one of ['random-init', 'checkpoint']" in schema_problems(onnx)


def test_deployable_and_its_reasons_agree(onnx: dict) -> None:
    onnx["package"]["not_deployable_because"] = []
    assert schema_problems(onnx) == ["package/not_deployable_because: [] should be non-empty"]


def test_parity_block_is_checked(onnx: dict) -> None:
    onnx["parity"]["top1_agreement"] = 1.5
    onnx["parity"]["failures"] = ["input 0 (noise): cosine 0.9 < 0.99999"]  # and yet passed: true
    assert schema_problems(onnx) == [
        "parity/failures: ['input 0 (noise): cosine 0.9 < 0.99999'] is expected to be empty",
        "parity/top1_agreement: 1.5 is greater than the maximum of 1",
    ]


def test_versions_need_efexport_and_a_commit_or_null(onnx: dict) -> None:
    onnx["versions"]["efexport_git_commit"] = None  # not a git checkout
    assert schema_problems(onnx) == []
    onnx["versions"]["efexport_git_commit"] = "main"
    del onnx["versions"]["efexport"]
    problems = schema_problems(onnx)
    assert problems[0] == "versions/efexport: required key is missing"
    assert problems[1].startswith("versions/efexport_git_commit: 'main' does not match")


def test_onnx_target_needs_its_opset(onnx: dict) -> None:
    del onnx["target"]["opset"]
    onnx["target"]["made_by"] = "a future efexport"  # extra target facts are allowed
    assert schema_problems(onnx) == ["target/opset: required key is missing"]


def test_a_dynamic_batch_onnx_manifest_is_accepted(onnx: dict) -> None:
    onnx["target"]["dynamic_batch"] = True
    onnx["inputs"][0]["shape"][0] = "batch"
    onnx["outputs"][0]["shape"][0] = "batch"
    onnx["latency"][0]["batch_size"] = 8
    assert schema_problems(onnx) == []


def test_coreml_target_needs_its_deployment_facts(coreml: dict) -> None:
    assert coreml["latency"] == [] and coreml["latency_note"]  # Core ML does not run here
    assert coreml["reference_execution"]["fp16_overflow"] is False
    del coreml["target"]["compute_units"]
    coreml["target"]["minimum_deployment_target"] = 16
    assert schema_problems(coreml) == ["target/compute_units: required key is missing",
                                       "target/minimum_deployment_target: 16 is not of type 'string'"]


def test_coreml_fp32_tensor_input_and_runtime_parity_are_accepted(coreml: dict) -> None:
    coreml["package"]["name"] = "efficientformer-l1-coreml-fp32"
    coreml["recipe"]["values"]["precision"] = "fp32"
    coreml["target"] |= {"precision": "fp32", "input": "tensor"}
    coreml["runtime_parity"] = {"coreml-all": {k: v for k, v in coreml["parity"].items()
                                               if k not in ("reference_file", "compared_against")}}
    assert schema_problems(coreml) == []
    coreml["runtime_parity"]["coreml-all"]["min_cosine"] = "high"
    assert schema_problems(coreml) == ["runtime_parity/coreml-all/min_cosine: 'high' is not of type 'number'"]


def test_coreml_reference_execution_is_checked(coreml: dict) -> None:
    coreml["reference_execution"]["fp16_overflow"] = "no"
    assert schema_problems(coreml) == ["reference_execution/fp16_overflow: 'no' is not of type 'boolean'"]


def test_tensorrt_target_needs_build_options_and_engine(tensorrt: dict) -> None:
    del tensorrt["target"]["build_options"]
    tensorrt["target"]["engine"] = {"reason": "no GPU"}
    assert schema_problems(tensorrt) == ["target/build_options: required key is missing",
                                         "target/engine/built: required key is missing"]


def test_tensorrt_with_an_engine_is_accepted_and_checked(tensorrt: dict) -> None:
    tensorrt["target"]["engine"] = {
        "built": True, "plan_file": "model.plan", "sha256": SHA, "timing_cache_sha256": SHA, "tensorrt": "10.3.0",
        "gpu": "NVIDIA A100", "compute_capability": "8.0", "cuda_runtime": "12.4", "driver": None,
        "build_seconds": 41.5, "network_layers": 120, "layers_pinned_fp32": 4, "tf32": False,
        "timing_cache_loaded": False, "plan_bytes": 25_000_000}
    tensorrt["weights"] = {"source": "checkpoint", "file": "l1.safetensors", "sha256": SHA, "format": "safetensors",
                           "layout": "timm"}
    tensorrt["package"] |= {"deployable": True, "not_deployable_because": []}
    tensorrt["files"] |= {"model.plan": {"sha256": SHA, "bytes": 25_000_000}, "timing.cache": {"sha256": SHA,
                                                                                                "bytes": 9}}
    gpu = {"kind": "gpu", "name": "NVIDIA A100", "compute_capability": "8.0"}
    stats = {"p50": 0.9, "p90": 1.0, "p99": 1.1, "mean": 0.95, "min": 0.8, "max": 1.2, "std": 0.05}
    tensorrt["latency"] = [{"backend": "tensorrt", "runtime_version": "10.3.0", "measured": measured,
                            "precision": "fp16", "batch_size": 8, "threads": None, "compute_units": None,
                            "warmup_runs": 1, "timed_runs": 20, "stats_ms": stats, "noise": None,
                            "method": {"rule": "1 warm-up call, then 20 timed calls in one run", "windows": 1,
                                       "converged": None},
                            "device": gpu, "schema": "efexport.latency/2",
                            "images_per_second": 8421.0} for measured in ("device_compute", "host_end_to_end")]
    del tensorrt["latency_note"]
    assert schema_problems(tensorrt) == []
    tensorrt["target"]["engine"]["sha256"] = "nope"
    del tensorrt["target"]["engine"]["plan_file"]
    assert schema_problems(tensorrt) == ["target/engine/plan_file: required key is missing",
                                         "target/engine/sha256: 'nope' does not match '^[0-9a-f]{64}$'"]


def test_a_tensorrt_package_without_an_engine_is_not_deployable(tensorrt: dict) -> None:
    tensorrt["target"]["engine"] = {"built": False, "reason": "no CUDA device"}
    tensorrt["weights"] = {"source": "checkpoint", "file": "l1.pth", "sha256": SHA, "format": "pth",
                           "layout": "upstream"}
    tensorrt["package"] |= {"deployable": True, "not_deployable_because": []}
    assert schema_problems(tensorrt) == ["package/deployable: False was expected"]


@pytest.mark.parametrize("value", [None, [], [1, 2], "efexport.manifest/3", 3, 2.5, True, {}])
def test_anything_that_is_not_a_manifest_gives_problems_not_exceptions(value: object) -> None:
    problems = schema_problems(value)
    assert problems
    if isinstance(value, dict):
        assert "schema: required key is missing" in problems and "files: required key is missing" in problems
    else:
        assert problems == [f"(root): {value!r} is not of type 'object'"]


def test_problems_are_sorted_by_path(onnx: dict) -> None:
    onnx["versions"]["efexport"] = 1
    onnx["files"]["model.onnx"]["bytes"] = -1
    onnx["schema"] = "efexport.manifest/1"
    problems = schema_problems(onnx)
    assert [p.split(":")[0] for p in problems] == ["files/model.onnx/bytes", "schema", "versions/efexport"]
    assert problems == sorted(problems)


def test_check_manifest_raises_naming_the_place_and_the_path(onnx: dict) -> None:
    onnx["files"]["model.onnx"]["sha256"] = "xyz"
    with pytest.raises(VerifyError) as caught:
        check_manifest(onnx, "pkg/manifest.json")
    assert str(caught.value) == ("pkg/manifest.json: manifest does not follow efexport.manifest/3: "
                                 "files/model.onnx/sha256: 'xyz' does not match '^[0-9a-f]{64}$'")


def test_check_manifest_shows_five_problems_and_counts_the_rest(onnx: dict) -> None:
    for key in ("model", "weights", "preprocessing", "inputs", "outputs", "target", "fold"):
        del onnx[key]
    with pytest.raises(VerifyError) as caught:
        check_manifest(onnx, "here")
    message = str(caught.value)
    assert message.endswith(" (and 2 more)")
    assert message.count("required key is missing") == 5
    with pytest.raises(VerifyError, match="^here: manifest does not follow efexport.manifest/3: "
                                          r"\(root\): None is not of type 'object'$"):
        check_manifest(None, "here")
