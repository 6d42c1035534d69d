"""Faults while a real ``efexport`` process runs: interrupts at every stage boundary, two exports racing for one
output, a full disk, and a failing parity gate, converter and runtime inside ``efexport all``.

What every case asserts: a distinct, documented exit code; the error names the stage and the cause; no artifact
that claims to be complete unless it verifies; no staging directory or temporary file left behind (each process
gets its own TMPDIR, which must be empty afterwards).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from efexport.exporter.errors import ExitCode
from efexport.exporter.verify import verify_package
from tests.helpers import REPO

PACKAGE = Path("efficientformer-l1") / "onnx-fp32"
ONNX_STAGES = ["load", "reference", "fold", "capture", "export", "validate", "benchmark", "package"]
FAST_LATENCY_TOML = {"warmup_runs = 10": "warmup_runs = 1", "window_runs = 20": "window_runs = 5",
                     "max_windows = 12": "max_windows = 3"}


def _fast_recipe(directory: Path, target: str = "onnx") -> Path:
    """The shipped recipe with the shortest latency run it allows: these tests are about faults, not timing."""
    text = (REPO / "recipes" / f"{target}.toml").read_text()
    for old, new in FAST_LATENCY_TOML.items():
        assert old in text, f"recipes/{target}.toml changed: update FAST_LATENCY_TOML"
        text = text.replace(old, new)
    path = directory / f"fast-{target}.toml"
    path.write_text(text)
    return path


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir(exist_ok=True)
    return os.environ | {"COLUMNS": "200", "NO_COLOR": "1", "TMPDIR": str(scratch)} | extra


def _efexport(*args: object) -> list[str]:
    return [str(Path(sys.executable).with_name("efexport")), *map(str, args)]


def _leftovers(tmp_path: Path, out: Path) -> list[str]:
    """Temporary files and staging directories anywhere the process could have written them."""
    # onnxruntime's import writes $TMPDIR/.ses, an id file of its own that it keeps on purpose
    scratch = [str(p) for p in (tmp_path / "tmpdir").rglob("*") if p.name != ".ses"]
    hidden = [str(p) for p in out.rglob(".*")] if out.exists() else []
    return scratch + hidden


def _files_under(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


# --- interrupts ---------------------------------------------------------------------------------------------------

# After each stage completes, one signal; SIGINT and SIGTERM take turns so both meet every kind of stage boundary.
BOUNDARIES = [(stage, signal.SIGINT if i % 2 == 0 else signal.SIGTERM) for i, stage in enumerate(ONNX_STAGES)]


@pytest.mark.parametrize(("after", "sig"), BOUNDARIES, ids=[f"{s}-{g.name}" for s, g in BOUNDARIES])
def test_interrupt_after_each_stage_exits_promptly_and_leaves_nothing(tmp_path: Path, after: str,
                                                                     sig: signal.Signals) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(_efexport("onnx", "--variant", "l1", "--recipe", _fast_recipe(tmp_path), "--out", out),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(tmp_path))
    seen: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:  # the console prints "ok <stage>" as each stage completes
        seen.append(line)
        if re.match(rf"ok {after}\b", line):
            process.send_signal(sig)
            signalled = time.monotonic()
            break
    else:
        pytest.fail(f"the export ended before stage {after} completed:\n{''.join(seen)}")
    _, errors = process.communicate(timeout=300)
    waited = time.monotonic() - signalled
    stderr = "".join(seen) + errors
    later = ONNX_STAGES[ONNX_STAGES.index(after) + 1:]
    if after == "package" and process.returncode == 0:  # the signal came after the rename: a finished package
        assert verify_package(out / PACKAGE).passed
    else:
        expected = ExitCode.INTERRUPTED if sig == signal.SIGINT else ExitCode.TERMINATED
        assert process.returncode == expected == 128 + sig, stderr
        assert "interrupted" in errors and "no partial artifact" in errors and "Traceback" not in stderr
        if after == "package" and _files_under(out):  # the rename came first: a complete package, never a part
            assert verify_package(out / PACKAGE).passed
        else:
            assert _files_under(out) == [], "an interrupted export left files"
        # prompt: no stage after the interrupted one completed (the one in progress is abandoned)
        assert not [stage for stage in later if re.search(rf"^ok {stage}\b", errors, re.M)], stderr
    assert _leftovers(tmp_path, out) == []
    print(f"{after}/{sig.name}: exit {process.returncode} {waited:.2f}s after the signal")


# --- two exports into one output ----------------------------------------------------------------------------------

@pytest.mark.parametrize("force", [False, True], ids=["without-force", "with-force"])
def test_two_exports_racing_for_one_output_never_mix(tmp_path: Path, force: bool) -> None:
    """Different seeds make the two artifacts differ in every weight: a mixed artifact cannot verify."""
    out, recipe = tmp_path / "out", _fast_recipe(tmp_path)
    flags = ["--force"] if force else []
    racers = [subprocess.Popen(_efexport("onnx", "--variant", "l1", "--seed", seed, "--recipe", recipe, "--out", out,
                                         "--json", *flags),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(tmp_path))
              for seed in (1, 2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in racers]
    codes = sorted(code for code, _, _ in results)
    if force:
        assert codes == [0, 0], results  # both finish; the later one replaced the earlier in one step
    else:
        assert codes == [0, ExitCode.OUTPUT_ERROR], results  # one is refused, naming the reason
        refused = next(json.loads(stdout) for code, stdout, _ in results if code)
        assert re.search(r"appeared while exporting|already exists", refused["error"]), refused
    report = verify_package(out / PACKAGE)
    assert report.passed, report.problems
    winner = json.loads((out / PACKAGE / "manifest.json").read_text())["weights"]["seed"]
    assert winner in (1, 2)
    assert _files_under(out) == sorted(["efficientformer-l1", str(PACKAGE), *(
        str(PACKAGE / name) for name in json.loads((out / PACKAGE / "manifest.json").read_text())["files"]),
        str(PACKAGE / "manifest.json")])
    assert _leftovers(tmp_path, out) == []


# --- a full disk ----------------------------------------------------------------------------------------------------

def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited over exec: writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize(("target", "limit", "stage"), [("onnx", 8 * 2**20, "export"),  # model.onnx is ~47 MB
                                                        ("coreml", 2**20, "export"),  # weight.bin ~24 MB
                                                        ("coreai", 2**20, "export")],  # main.mlirb ~24 MB
                         ids=["onnx-model", "coreml-weights", "coreai-program"])
def test_a_disk_that_fills_mid_write_is_an_output_error_and_leaves_nothing(tmp_path: Path, target: str, limit: int,
                                                                          stage: str) -> None:
    out = tmp_path / "out"
    result = subprocess.run(_efexport(target, "--variant", "l1", "--out", out, "--json"), capture_output=True,
                            text=True, env=_environment(tmp_path), preexec_fn=_file_size_limit(limit), timeout=600)
    assert result.returncode == ExitCode.OUTPUT_ERROR, result.stderr
    error = json.loads(result.stdout)
    assert error["stage"] == stage and "cannot write" in error["error"], error
    assert re.search(r"file too large|file-size limit", error["error"]), error
    assert "Traceback" not in result.stderr
    assert _files_under(out) == [] and _leftovers(tmp_path, out) == []


# --- failures inside ``efexport all`` -------------------------------------------------------------------------------

# Loaded into the efexport process (PYTHONPATH) to make third-party code fail the way it can in the field. The
# product is unchanged; the faults are in the libraries it calls.
FAULTS = textwrap.dedent('''
    import faulthandler, os
    import numpy as np
    import onnxruntime

    _open = onnxruntime.InferenceSession.__init__
    _run = onnxruntime.InferenceSession.run

    def _init(self, path, *args, **kwargs):
        self._fault_path = str(path)
        _open(self, path, *args, **kwargs)

    def _faulty_run(self, *args, **kwargs):
        if "/.onnx-" in self._fault_path:  # the ONNX target's staged model: numerically wrong outputs
            return [np.asarray(o) + 0.5 for o in _run(self, *args, **kwargs)]
        if "/.tensorrt-" in self._fault_path:  # TensorRT's prepared graph: the runtime segfaults
            faulthandler.disable()
            faulthandler._sigsegv()
        return _run(self, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = _init
    onnxruntime.InferenceSession.run = _faulty_run

    import coremltools

    def _convert(*args, **kwargs):
        raise NotImplementedError("PyTorch convert function for op 'efexport_fault' not implemented.")

    coremltools.convert = _convert

    import coreai_torch

    def _to_coreai(self, *args, **kwargs):
        raise RuntimeError("coreai-torch: cannot lower op 'efexport_fault'")

    coreai_torch.TorchConverter.to_coreai = _to_coreai
''')


def test_all_reports_each_failing_target_with_its_stage_and_carries_on(tmp_path: Path) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(FAULTS)
    out = tmp_path / "out"
    result = subprocess.run(_efexport("all", "--variant", "l1", "--out", out, "--json"), capture_output=True,
                            text=True, timeout=900, env=_environment(tmp_path, PYTHONPATH=str(faults)))
    summary = json.loads(result.stdout)
    rows = {row["target"]: row for row in summary["targets"]}
    assert list(rows) == ["onnx", "coreml", "tensorrt", "coreai"], summary  # every target ran, in order
    assert result.returncode == ExitCode.PARITY_FAILED, result.stderr  # the first failure's code
    assert (rows["onnx"]["status"], rows["onnx"]["stage"], rows["onnx"]["exit_code"]) == ("failed", "validate", 5)
    assert "parity gate failed" in rows["onnx"]["error"]
    assert (rows["coreml"]["stage"], rows["coreml"]["exit_code"]) == ("export", ExitCode.STAGE_FAILED)
    assert "NotImplementedError" in rows["coreml"]["error"] and "efexport_fault" in rows["coreml"]["error"]
    assert (rows["tensorrt"]["stage"], rows["tensorrt"]["exit_code"]) == ("validate", ExitCode.STAGE_FAILED)
    assert "crashed" in rows["tensorrt"]["error"] and "SIGSEGV" in rows["tensorrt"]["error"]
    assert (rows["coreai"]["stage"], rows["coreai"]["exit_code"]) == ("export", ExitCode.STAGE_FAILED)
    assert "efexport_fault" in rows["coreai"]["error"]
    for target in rows:  # the console names the target, its stage and the cause too
        assert re.search(rf"{target} failed: \[{rows[target]['stage']}\]", result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert _files_under(out) == [] and _leftovers(tmp_path, out) == []
