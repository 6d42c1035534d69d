"""The efexport command end to end, as a real subprocess: exports, verify, help, exit codes, nothing half-written.

Bad flags, recipes, outputs and packages (and what each must leave untouched) are cases of the bad-input catalogue,
tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from efexport.exporter.errors import ExitCode
from efexport.exporter.recipes import default_recipe_path
from tests.helpers import run_cli


def artifact_names(out: Path) -> list[str]:
    """Everything under ``out``, staging directories included, relative to it."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.exists() else []


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cli")
    result = run_cli("onnx", "--variant", "l1", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_export_prints_machine_readable_result(exported: tuple[Path, dict]) -> None:
    out, summary = exported
    artifact = out / "efficientformer-l1" / "onnx-fp32"
    assert summary["status"] == "ok" and Path(summary["artifact"]) == artifact
    assert summary["weights"] == {"source": "random-init", "seed": 0}
    assert summary["parity"]["passed"] and summary["parity"]["max_abs"] <= 1e-4
    assert set(summary["stage_seconds"]) == {"load", "reference", "fold", "capture", "export", "validate",
                                             "benchmark", "package"}
    assert artifact_names(out) == ["efficientformer-l1", "efficientformer-l1/onnx-fp32",
                                   "efficientformer-l1/onnx-fp32/README.md",
                                   "efficientformer-l1/onnx-fp32/manifest.json",
                                   "efficientformer-l1/onnx-fp32/model.onnx",
                                   "efficientformer-l1/onnx-fp32/reference_io.npz"]


def test_random_init_warns_on_the_console(tmp_path: Path) -> None:
    # An existing destination is refused right after the load stage: a cheap run that still warns.
    (tmp_path / "efficientformer-l1" / "onnx-fp32").mkdir(parents=True)
    result = run_cli("onnx", "--variant", "l1", "--out", tmp_path)
    assert "randomly initialised" in result.stderr and "random-init" in result.stderr
    assert result.returncode == ExitCode.OUTPUT_ERROR
    assert "already exists" in result.stderr and "--force" in result.stderr


def test_verify_passes_on_a_fresh_artifact(exported: tuple[Path, dict]) -> None:
    artifact = exported[0] / "efficientformer-l1" / "onnx-fp32"
    result = run_cli("verify", artifact, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["files_checked"] == 4 and report["parity"]["max_abs"] <= 1e-4


@pytest.mark.parametrize(
    ("section", "stage", "reported"),
    # (the fold gate cannot be made to fail from a recipe: it is never tighter than float32 rounding of the
    # unfolded model; tests/test_fold_stage.py breaks a pass on purpose instead)
    [("[parity.tolerances.fp32]\nmax_abs = 1e-4", "validate", "input 0 (noise): max_abs")],
)
def test_failed_parity_gate_exits_5_and_writes_nothing(tmp_path: Path, section: str, stage: str,
                                                       reported: str) -> None:
    text = default_recipe_path("onnx").read_text()
    start = text.index(section)
    strict = text[:start] + re.sub(r"max_abs = [0-9.e-]+", "max_abs = 1e-12", text[start:], count=1)
    recipe = tmp_path / "strict.toml"
    recipe.write_text(strict)
    out = tmp_path / "out"
    result = run_cli("onnx", "--variant", "l1", "--out", out, "--recipe", recipe, "--quiet")
    assert result.returncode == ExitCode.PARITY_FAILED, result.stderr
    assert f"[{stage}]" in result.stderr and reported in result.stderr
    assert [p for p in artifact_names(out) if p.count("/") >= 1] == []
    assert not (out / "efficientformer-l1").exists()  # no empty directories left behind either


def test_help_texts() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "onnx" in top.stdout and "verify" in top.stdout and "Exit codes" in top.stdout
    onnx_help = run_cli("onnx", "--help")
    for flag in ("--variant", "--weights", "--seed", "--out", "--recipe", "--opset", "--dynamic-batch", "--force",
                 "--quiet", "--json"):
        assert flag in onnx_help.stdout
    verify_help = run_cli("verify", "--help")
    assert verify_help.returncode == 0
    for flag in ("--trusted-key", "--identity", "--issuer", "--certificate-chain", "--require-signature"):
        assert flag in verify_help.stdout
    sign_help = run_cli("sign", "--help")
    for flag in ("--key", "--password-env", "--certificate", "--certificate-chain", "--sigstore", "--json"):
        assert flag in sign_help.stdout
    assert "--checkpoint-url" in run_cli("provenance", "--help").stdout


def test_variants_lists_published_sizes() -> None:
    result = run_cli("variants", "--json")
    rows = {r["variant"]: r for r in json.loads(result.stdout)}
    assert rows["l3"]["published_params_m"] == 31.41 and rows["l7"]["num_mb3d"] == 8
    assert rows["l1"]["package"] == "efficientformer-l1" and rows["l1"]["also"] == "efficientformer_l1"
