"""Each target's facts in the manifest (``target``) belong to the target: a model in its own subpackage, named by
its TargetSpec, from which manifest_model builds the target union and the target's not-deployable rules. Light:
no package is exported here."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from efexport.exporter import manifest_model
from efexport.exporter.manifest import tool_versions
from efexport.exporter.manifest_blocks import NotDeployableWhen, TargetFacts
from efexport.exporter.manifest_model import TARGET_FACTS, target_block
from efexport.exporter.manifest_schema import generate_schema
from efexport.exporter.targets import TARGETS
from efexport.exporter.targets.spec import TargetSpec
from efexport.exporter.targets.tensorrt.facts import TensorRTTarget

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_target_names_its_facts_model_in_its_own_subpackage(name: str) -> None:
    spec = TARGETS[name]
    module, _, _ = spec.facts.partition(":")
    assert module == f"efexport.exporter.targets.{name}.facts"
    model = spec.facts_model()
    assert issubclass(model, TargetFacts) and model.format_name() == name
    assert TARGET_FACTS[name] is model


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_facts_module_imports_only_pydantic_and_the_blocks(name: str) -> None:
    tree = ast.parse((REPO / "exporter" / "targets" / name / "facts.py").read_text())
    imported = {node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names}
    assert {m for m in imported if m and m.startswith("efexport")} == {"efexport.exporter.manifest_blocks"}
    assert {m.split(".")[0] for m in imported if m} <= {"__future__", "collections", "typing", "pydantic",
                                                          "efexport"}


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_facts_model_states_the_precisions_its_target_exports(name: str) -> None:
    annotation = TARGET_FACTS[name].model_fields["precision"].annotation
    assert set(typing.get_args(annotation)) == set(TARGETS[name].precisions)


def test_the_target_union_is_the_registry() -> None:
    assert list(TARGET_FACTS) == list(TARGETS)
    target = generate_schema()["properties"]["target"]
    assert target["properties"]["format"]["enum"] == list(TARGETS)
    assert [rule["if"]["properties"]["format"]["const"] for rule in target["allOf"]] == list(TARGETS)


def test_manifest_model_names_no_target() -> None:
    """A new target adds its facts in its own subpackage and nothing to manifest_model.py."""
    source = Path(manifest_model.__file__).read_text()
    tree = ast.parse(source)
    assert [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in TARGETS] == []
    for model in TARGET_FACTS.values():
        assert model.__name__ not in source


def test_a_facts_model_must_describe_its_own_format(monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = TARGETS["onnx"]
    spec = TargetSpec(**{**onnx.__dict__, "name": "coreai"})  # its facts model says onnx
    monkeypatch.setattr(manifest_model, "TARGETS", {"coreai": spec})
    with pytest.raises(TypeError, match="coreai"):
        manifest_model._target_facts()


def test_the_tensorrt_rule_comes_from_its_facts() -> None:
    (rule,) = TensorRTTarget.not_deployable_when
    assert rule == NotDeployableWhen(("engine", "built"), False, "a TensorRT package without an engine is not "
                                                                  "deployable")
    stated = [r for r in generate_schema()["allOf"] if r.get("$comment", "").startswith("A TensorRT package")]
    assert stated == [{
        "$comment": "A TensorRT package without an engine is not deployable.",
        "if": {"properties": {"target": {"properties": {"format": {"const": "tensorrt"},
                                                        "engine": {"properties": {"built": {"const": False}},
                                                                   "required": ["built"]}},
                                         "required": ["format", "engine"]}},
               "required": ["target"]},
        "then": {"properties": {"package": {"properties": {"deployable": {"const": False}}}}},
    }]
    assert all(TARGET_FACTS[name].not_deployable_when == () for name in TARGETS if name != "tensorrt")


def test_a_not_deployable_rule_holds_only_on_its_value() -> None:
    rule = NotDeployableWhen(("engine", "built"), False, "no engine")
    facts = {"format": "tensorrt", "model_file": "model.onnx", "precision": "fp16", "op_counts": {"Conv": 1},
             "opset": 17, "simplifier": "onnxsim", "dynamic_batch": True, "trtexec": ["trtexec"],
             "build_options": {"input_name": "image", "image_size": 224, "precision": "fp16",
                               "profile": {"min": 1, "opt": 8, "max": 64}, "fp32_layers": [], "workspace_mib": 4096,
                               "optimization_level": 3, "timing_cache": "timing.cache",
                               "hardware_compatibility": "none", "version_compatible": False}}
    without = target_block(facts | {"engine": {"built": False, "reason": "no GPU"}})
    assert isinstance(without, TensorRTTarget) and rule.holds(without)
    built = target_block(facts | {"engine": {"built": True, "plan_file": "model.plan", "sha256": "0" * 64,
                                             "timing_cache_sha256": "1" * 64, "tensorrt": "10.3.0"}})
    assert not rule.holds(built)
    assert not NotDeployableWhen(("no", "such"), False, "x").holds(without)
    assert not NotDeployableWhen(("engine", "built"), 0, "x").holds(without)  # False is not 0 here


def test_tool_versions_track_onnxscript() -> None:
    """The dynamo ONNX exporter converts with onnxscript: its version is recorded where it is installed."""
    pytest.importorskip("onnxscript")
    assert tool_versions()["onnxscript"]
