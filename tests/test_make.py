"""``make all``: packages and bundles per variant x platform, redone only when their inputs change."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (REPO / ".venv" / ".installed").exists(),
                                reason="make all runs .venv/bin/efexport: run `make setup` (make test does) first")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True, timeout=600)


def test_make_all_builds_bundles_incrementally(tmp_path: Path) -> None:
    recipe = tmp_path / "onnx.toml"
    shutil.copy(REPO / "recipes" / "onnx.toml", recipe)
    settings = [f"OUT={tmp_path / 'out'}", "VARIANTS=l1", "PLATFORMS=onnx", f"RECIPE_onnx={recipe}",
                "ARGS=--static-batch"]
    built = make("-j2", "all", *settings)
    assert built.returncode == 0, built.stdout + built.stderr
    bundle = tmp_path / "out" / "bundles" / "efficientformer-l1-onnx-fp32.zip"
    manifest = tmp_path / "out" / "efficientformer-l1" / "onnx-fp32" / "manifest.json"
    assert bundle.is_file() and (bundle.parent / (bundle.name + ".sha256")).is_file()
    assert make("-q", "all", *settings).returncode == 0  # up to date: nothing would be redone
    unchanged = make("all", *settings)
    assert "efexport" not in unchanged.stdout, unchanged.stdout

    before = manifest.stat().st_mtime_ns
    later = bundle.stat().st_mtime + 5
    os.utime(recipe, (later, later))  # an edited recipe
    assert make("-q", "all", *settings).returncode == 1
    planned = make("-n", "all", *settings).stdout  # what a rebuild would run: the package, then its bundle
    assert "efexport onnx --variant l1" in planned and f"--recipe {recipe}" in planned
    assert planned.index("efexport onnx") < planned.index("efexport bundle")
    assert manifest.stat().st_mtime_ns == before  # a dry run changed nothing


def test_targets_mk_is_generated_from_the_registries() -> None:
    """The Makefile's target and variant lists come from the registries: targets.mk is what the CLI generates."""
    from efexport.exporter.cli.info import makefile_include
    from efexport.exporter.models import FAMILIES
    from efexport.exporter.targets import TARGETS

    text = (REPO / "targets.mk").read_text()
    assert text == makefile_include(), "targets.mk is stale: run `efexport targets --makefile > targets.mk`"
    assert f"TARGET_NAMES := {' '.join(TARGETS)}\n" in text
    for entry in FAMILIES:
        for variant in entry.variants:
            assert f"MODEL_{variant} := {entry.name}-{variant}\n" in text
    planned = make("-n", "tensorrt", "VARIANT=l1").stdout  # a documented non-failure exit is tolerated
    assert "efexport tensorrt --variant l1" in planned and "|| test $? -eq 8" in planned
