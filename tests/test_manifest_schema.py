"""The manifest schema (efexport.manifest/3) against real manifests of every target, and the mistakes it catches,
each reported with the JSON path where it is; the typed models it is generated from, which refuse the same
mistakes, and the generated file kept current."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import MANIFEST_SCHEMA
from efexport.exporter.manifest_model import (
    LatencyDevice,
    LatencySchemaId,
    Manifest,
    ManifestSchemaId,
    TensorSpec,
    dump_manifest,
)
from efexport.exporter.manifest_schema import (
    SCHEMA_FILE,
    SCHEMA_ID,
    check_manifest,
    generate_schema,
    main,
    manifest_schema,
    schema_problems,
    schema_text,
)
from efexport.exporter.targets.tensorrt.facts import TensorRTEngine
from efexport.validate.latency import LATENCY_SCHEMA

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

SHA = "0123456789abcdef" * 4


def _model_accepts(manifest: object) -> bool:
    try:
        Manifest.model_validate(manifest)
    except ValidationError:
        return False
    return True


def _problems(manifest: object) -> list[str]:
    """schema_problems, once the typed model has given the same verdict: it refuses exactly what the generated
    schema refuses."""
    problems = schema_problems(manifest)
    assert _model_accepts(manifest) == (not problems), problems
    return problems


def _at(problems: list[str], path: str) -> list[str]:
    """The problems reported at exactly ``path``."""
    return [p for p in problems if p.startswith(f"{path}: ")]


def test_the_schema_is_a_versioned_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID == "https://efexport.invalid/schemas/efexport.manifest-3.schema.json"
    assert schema["title"] and schema["description"]
    assert schema["properties"]["schema"]["const"] == MANIFEST_SCHEMA
    assert schema["additionalProperties"] is False
    assert manifest_schema() is manifest_schema()  # read once


def test_the_checked_in_schema_is_the_one_the_models_generate() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), \
        "run: python -m efexport.exporter.manifest_schema --write"
    assert manifest_schema() == generate_schema()


def test_the_schema_command_writes_the_schema_and_checks_it(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    written = tmp_path / "manifest.schema.json"
    assert main(["--check"], written) == 1  # not there yet
    assert main(["--write"], written) == 0
    assert written.read_text(encoding="utf-8") == schema_text()
    assert main(["--check"], written) == 0
    written.write_text(schema_text().replace("efexport.latency/2", "efexport.latency/1"), encoding="utf-8")
    capsys.readouterr()
    assert main(["--check"], written) == 1
    assert "--write" in capsys.readouterr().err


def test_the_models_name_the_schema_ids_the_code_writes() -> None:
    assert typing.get_args(ManifestSchemaId) == (MANIFEST_SCHEMA,)
    assert typing.get_args(LatencySchemaId) == (LATENCY_SCHEMA,)


def test_the_schema_names_its_blocks_as_before() -> None:
    defs = generate_schema()["$defs"]
    assert {"latency_entry", "latency_stats", "parity_report", "tensorrt_engine", "onnx_target", "coreml_target",
            "tensorrt_target", "random_init_weights", "checkpoint_weights", "file_entry"} <= set(defs)
    assert all("title" not in definition and definition["description"] for definition in defs.values())
    files = generate_schema()["properties"]["files"]
    assert files["propertyNames"]["pattern"].startswith("^(?![A-Za-z]:)")  # not patternProperties: others pass
    assert files["additionalProperties"] == {"$ref": "#/$defs/file_entry"}


def test_real_manifests_follow_the_schema(real: tuple[str, Path, dict]) -> None:
    target, path, manifest = real
    assert manifest["target"]["format"] == target
    assert _problems(manifest) == []
    check_manifest(manifest, str(path))  # does not raise


def test_real_manifests_go_through_the_models_unchanged(real: tuple[str, Path, dict]) -> None:
    """build_manifest writes through the models; read back, validated and dumped again, a manifest is the same
    JSON text: no key added, dropped or moved (extra keys stay where they were), no value converted."""
    _, _, manifest = real
    assert json.dumps(dump_manifest(Manifest.model_validate(manifest))) == json.dumps(manifest)


def test_every_real_file_entry_is_checked(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    first = next(iter(manifest["files"]))
    manifest["files"][first]["bytes"] = "many"
    assert _problems(manifest) == [f"files/{first}/bytes: 'many' is not of type 'integer'"]


def test_a_missing_top_level_key_is_named(onnx: dict) -> None:
    del onnx["parity"]
    assert _problems(onnx) == ["parity: required key is missing"]


def test_a_wrong_type_is_named_with_its_path(onnx: dict) -> None:
    onnx["parity"]["max_abs"] = "0.00001"
    assert _problems(onnx) == ["parity/max_abs: '0.00001' is not of type 'number'"]


def test_a_bad_file_hash_is_named_with_the_file(onnx: dict) -> None:
    onnx["files"]["model.onnx"]["sha256"] = "xyz"
    assert _problems(onnx) == ["files/model.onnx/sha256: 'xyz' does not match '^[0-9a-f]{64}$'"]
    onnx["files"]["model.onnx"]["sha256"] = SHA.upper()  # hex, but not lowercase
    assert _at(_problems(onnx), "files/model.onnx/sha256")


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/../../x", "a\\b.onnx", "./model.onnx",
                                  "a//b", "C:/model.onnx", ".."])
def test_file_paths_must_stay_inside_the_package(onnx: dict, name: str) -> None:
    onnx["files"][name] = {"sha256": SHA, "bytes": 1}
    problems = _problems(onnx)
    assert len(problems) == 1 and problems[0].startswith(f"files/{name}: key '"), problems


@pytest.mark.parametrize("name", ["model.onnx", "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
                                  "..hidden", "a..b", ".timing.cache", "README.md"])
def test_ordinary_file_paths_are_accepted(onnx: dict, name: str) -> None:
    onnx["files"][name] = {"sha256": SHA, "bytes": 0}
    assert _problems(onnx) == []


def test_file_entries_are_closed_and_the_table_not_empty(onnx: dict) -> None:
    onnx["files"]["model.onnx"]["size"] = 3
    assert _problems(onnx) == ["files/model.onnx/size: unknown key (not allowed here)"]
    onnx["files"] = {}
    assert _at(_problems(onnx), "files") == ["files: {} should be non-empty"]


def test_published_figures_must_say_they_are_published(onnx: dict) -> None:
    onnx["model"]["published"]["status"] = "measured"
    assert _problems(onnx) == ["model/published/status: 'published, not measured here' was expected"]
    del onnx["model"]["published"]["source"]
    assert "model/published/source: required key is missing" in _problems(onnx)


def test_an_unknown_top_level_key_is_refused(onnx: dict) -> None:
    onnx["latnecy"] = onnx["latency"]
    assert _problems(onnx) == ["latnecy: unknown key (not allowed here)"]


def test_latency_entries_are_checked(onnx: dict) -> None:
    assert onnx["latency"], "the ONNX export times ONNX Runtime here"
    onnx["latency"][0]["measured"] = "wall"
    onnx["latency"][0]["stats_ms"]["p50"] = -1.0
    onnx["latency"][0]["batch_size"] = 0
    del onnx["latency"][0]["device"]
    assert _problems(onnx) == [
        "latency/0/batch_size: 0 is less than the minimum of 1",
        "latency/0/device: required key is missing",
        "latency/0/measured: 'wall' is not one of ['host_end_to_end', 'device_compute']",
        "latency/0/stats_ms/p50: -1.0 is less than the minimum of 0",
    ]


def test_latency_threads_may_be_null_but_not_zero(onnx: dict) -> None:
    onnx["latency"][0]["threads"] = None  # Core ML and GPUs schedule their own threads
    assert _problems(onnx) == []
    onnx["latency"][0]["threads"] = 0
    assert _problems(onnx) == ["latency/0/threads: 0 is less than the minimum of 1"]


def test_an_empty_latency_needs_a_note(onnx: dict) -> None:
    onnx["latency"] = []
    assert _problems(onnx) == ["latency_note: required key is missing"]
    onnx["latency_note"] = "nothing runs here"
    assert _problems(onnx) == []


def test_a_package_name_for_an_unknown_variant_is_refused(onnx: dict) -> None:
    onnx["package"]["name"] = "efficientformer-l2-onnx-fp32"
    problems = _at(_problems(onnx), "package/name")
    assert problems and all("'efficientformer-l2-onnx-fp32' does not match" in p for p in problems)


def test_the_package_name_must_match_variant_format_and_precision(onnx: dict) -> None:
    onnx["package"]["name"] = "efficientformer-l3-coreml-fp16"
    problems = _problems(onnx)
    assert {p.split(" does not match ")[1] for p in problems} == {"'^efficientformer-l1-'", "'-onnx-[a-z0-9]+$'",
                                                                   "'-fp32$'"}
    assert all(p.startswith("package/name: ") for p in problems)


def test_random_init_weights_cannot_be_deployable(onnx: dict) -> None:
    onnx["package"]["deployable"] = True
    onnx["package"]["not_deployable_because"] = []
    assert _problems(onnx) == ["package/deployable: False was expected"]


def test_checkpoint_weights_are_accepted_and_checked(onnx: dict) -> None:
    onnx["weights"] = {"source": "checkpoint", "file": "l1.pth", "sha256": SHA, "format": "pth", "layout": "upstream"}
    onnx["package"] |= {"deployable": True, "not_deployable_because": []}
    assert _problems(onnx) == []
    onnx["weights"]["sha256"] = "abc"
    onnx["weights"]["layout"] = "keras"
    assert _problems(onnx) == ["weights/layout: 'keras' is not one of ['upstream', 'timm']",
                                     "weights/sha256: 'abc' does not match '^[0-9a-f]{64}$'"]


def test_random_init_weights_need_an_integer_seed(onnx: dict) -> None:
    onnx["weights"]["seed"] = "0"
    assert _problems(onnx) == ["weights/seed: '0' is not of type 'integer'"]
    onnx["weights"] = {"source": "downloaded"}
    assert "weights/source: 'downloaded' is not one of ['random-init', 'checkpoint']" in _problems(onnx)


def test_deployable_and_its_reasons_agree(onnx: dict) -> None:
    onnx["package"]["not_deployable_because"] = []
    assert _problems(onnx) == ["package/not_deployable_because: [] should be non-empty"]


def test_parity_block_is_checked(onnx: dict) -> None:
    onnx["parity"]["top1_agreement"] = 1.5
    onnx["parity"]["failures"] = ["input 0 (noise): cosine 0.9 < 0.99999"]  # and yet passed: true
    assert _problems(onnx) == [
        "parity/failures: ['input 0 (noise): cosine 0.9 < 0.99999'] is expected to be empty",
        "parity/top1_agreement: 1.5 is greater than the maximum of 1",
    ]


def test_versions_need_efexport_and_a_commit_or_null(onnx: dict) -> None:
    onnx["versions"]["efexport_git_commit"] = None  # not a git checkout
    assert _problems(onnx) == []
    onnx["versions"]["efexport_git_commit"] = "main"
    del onnx["versions"]["efexport"]
    problems = _problems(onnx)
    assert problems[0] == "versions/efexport: required key is missing"
    assert problems[1].startswith("versions/efexport_git_commit: 'main' does not match")


def test_onnx_target_needs_its_opset(onnx: dict) -> None:
    del onnx["target"]["opset"]
    onnx["target"]["made_by"] = "a future efexport"  # extra target facts are allowed
    assert _problems(onnx) == ["target/opset: required key is missing"]


def test_a_dynamic_batch_onnx_manifest_is_accepted(onnx: dict) -> None:
    onnx["target"]["dynamic_batch"] = True
    onnx["inputs"][0]["shape"][0] = "batch"
    onnx["outputs"][0]["shape"][0] = "batch"
    onnx["latency"][0]["batch_size"] = 8
    assert _problems(onnx) == []


def test_coreml_target_needs_its_deployment_facts(coreml: dict) -> None:
    assert coreml["latency"] == [] and coreml["latency_note"]  # Core ML does not run here
    assert coreml["reference_execution"]["fp16_overflow"] is False
    del coreml["target"]["compute_units"]
    coreml["target"]["minimum_deployment_target"] = 16
    assert _problems(coreml) == ["target/compute_units: required key is missing",
                                       "target/minimum_deployment_target: 16 is not of type 'string'"]


def test_coreml_fp32_tensor_input_and_runtime_parity_are_accepted(coreml: dict) -> None:
    coreml["package"]["name"] = "efficientformer-l1-coreml-fp32"
    coreml["recipe"]["values"]["precision"] = "fp32"
    coreml["target"] |= {"precision": "fp32", "input": "tensor"}
    coreml["runtime_parity"] = {"coreml-all": {k: v for k, v in coreml["parity"].items()
                                               if k not in ("reference_file", "compared_against")}}
    assert _problems(coreml) == []
    coreml["runtime_parity"]["coreml-all"]["min_cosine"] = "high"
    assert _problems(coreml) == ["runtime_parity/coreml-all/min_cosine: 'high' is not of type 'number'"]


def test_coreml_reference_execution_is_checked(coreml: dict) -> None:
    coreml["reference_execution"]["fp16_overflow"] = "no"
    assert _problems(coreml) == ["reference_execution/fp16_overflow: 'no' is not of type 'boolean'"]


def test_tensorrt_target_needs_build_options_and_engine(tensorrt: dict) -> None:
    del tensorrt["target"]["build_options"]
    tensorrt["target"]["engine"] = {"reason": "no GPU"}
    assert _problems(tensorrt) == ["target/build_options: required key is missing",
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
    assert _problems(tensorrt) == []
    tensorrt["target"]["engine"]["sha256"] = "nope"
    del tensorrt["target"]["engine"]["plan_file"]
    assert _problems(tensorrt) == ["target/engine/plan_file: required key is missing",
                                         "target/engine/sha256: 'nope' does not match '^[0-9a-f]{64}$'"]


def test_a_tensorrt_package_without_an_engine_is_not_deployable(tensorrt: dict) -> None:
    tensorrt["target"]["engine"] = {"built": False, "reason": "no CUDA device"}
    tensorrt["weights"] = {"source": "checkpoint", "file": "l1.pth", "sha256": SHA, "format": "pth",
                           "layout": "upstream"}
    tensorrt["package"] |= {"deployable": True, "not_deployable_because": []}
    assert _problems(tensorrt) == ["package/deployable: False was expected"]


@pytest.mark.parametrize("value", [None, [], [1, 2], "efexport.manifest/3", 3, 2.5, True, {}])
def test_anything_that_is_not_a_manifest_gives_problems_not_exceptions(value: object) -> None:
    problems = _problems(value)
    assert problems
    if isinstance(value, dict):
        assert "schema: required key is missing" in problems and "files: required key is missing" in problems
    else:
        assert problems == [f"(root): {value!r} is not of type 'object'"]


def test_problems_are_sorted_by_path(onnx: dict) -> None:
    onnx["versions"]["efexport"] = 1
    onnx["files"]["model.onnx"]["bytes"] = -1
    onnx["schema"] = "efexport.manifest/1"
    problems = _problems(onnx)
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


def test_nan_and_infinities_are_refused_in_memory(onnx: dict) -> None:
    """read_manifest refuses them in a file; a manifest built in memory (what package() checks) may hold them,
    and no schema keyword can (every comparison with NaN is false)."""
    onnx["parity"]["max_abs"] = float("nan")
    onnx["latency"][0]["device"]["load"] = float("inf")  # an open block: only the NaN check sees it
    assert _problems(onnx) == ["latency/0/device/load: NaN and infinities are not JSON numbers",
                               "parity/max_abs: NaN and infinities are not JSON numbers"]


def test_a_capture_block_is_accepted_and_checked(onnx: dict) -> None:
    onnx["capture"] = {"method": "torch.export", "torch_version": "2.5.1", "strict": "false"}
    assert _problems(onnx) == []
    assert json.dumps(dump_manifest(Manifest.model_validate(onnx))) == json.dumps(onnx)
    onnx["capture"] = {"method": "fx", "torch_version": "", "dynamic": True}
    assert _problems(onnx) == ["capture/dynamic: True is not of type 'string'",
                               "capture/method: 'fx' is not one of ['torch.export', 'torch.jit.trace']",
                               "capture/torch_version: '' should be non-empty"]
    onnx["capture"] = {"torch_version": "2.5.1"}
    assert _problems(onnx) == ["capture/method: required key is missing"]


def test_a_key_that_may_be_left_out_is_never_null(onnx: dict, tensorrt: dict) -> None:
    onnx["latency_note"] = None
    assert _problems(onnx) == ["latency_note: None is not of type 'string'"]
    tensorrt["target"]["engine"]["gpu"] = None  # optional, not nullable
    tensorrt["target"]["engine"]["driver"] = None  # optional and nullable (no driver found)
    assert _problems(tensorrt) == ["target/engine/gpu: None is not of type 'string'"]


def test_values_are_not_coerced(onnx: dict) -> None:
    onnx["model"]["parameters"] = "12000000"  # lax pydantic would take it for 12000000
    onnx["parity"]["top1_agreement"] = True  # ... and this for 1.0
    assert _problems(onnx) == ["model/parameters: '12000000' is not of type 'integer'",
                               "parity/top1_agreement: True is not of type 'number'"]


def test_the_models_refuse_what_the_schema_refuses_when_built_in_python() -> None:
    """What build_manifest does: blocks made from the stages' dataclasses (tuples for arrays), refused with a
    message naming the rule."""
    spec = TensorSpec.model_validate({"name": "image", "shape": ("batch", 3, 224, 224), "dtype": "float32"})
    assert spec.model_dump(mode="json") == {"name": "image", "shape": ["batch", 3, 224, 224], "dtype": "float32"}
    with pytest.raises(ValidationError, match="needs plan_file, sha256"):
        TensorRTEngine(built=True, timing_cache_sha256=SHA, tensorrt="10.3.0")
    with pytest.raises(ValidationError, match="needs reason"):
        TensorRTEngine(built=False)
    with pytest.raises(ValidationError, match="sha256: leave the key out instead of setting it to null"):
        TensorRTEngine(built=False, reason="no GPU", sha256=None)
    with pytest.raises(ValidationError, match="cpu_mhz/1: NaN and infinities are not JSON"):
        LatencyDevice(kind="cpu", cpu_mhz=[3000.0, float("nan")])
    assert TensorRTEngine(built=False, reason="no GPU", cuda_runtime=None).model_dump(
        mode="json", exclude_unset=True) == {"built": False, "reason": "no GPU", "cuda_runtime": None}


def test_the_rules_across_blocks_hold_in_the_models(onnx: dict) -> None:
    onnx["recipe"]["values"]["precision"] = "fp16"
    onnx["package"]["name"] = "efficientformer-l3-onnx-fp32"
    with pytest.raises(ValidationError) as caught:
        Manifest.model_validate(onnx)
    message = str(caught.value)
    assert "package.name 'efficientformer-l3-onnx-fp32' is not 'efficientformer-l1-onnx-fp32'" in message
    assert "the recipe (onnx, fp16) and the target (onnx, fp32) disagree" in message
    assert _problems(onnx) == ["package/name: 'efficientformer-l3-onnx-fp32' does not match '^efficientformer-l1-'",
                               "recipe/values/precision: 'fp32' was expected"]
