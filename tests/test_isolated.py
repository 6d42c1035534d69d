"""``validate.isolated``: a runtime that crashes, aborts or raises takes down a child process, never the caller."""

from __future__ import annotations

import faulthandler
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from efexport.exporter.errors import ExitCode, StageError
from efexport.validate.isolated import ISOLATED, RuntimeCrashed, outputs_isolated

pytestmark = pytest.mark.skipif(not ISOLATED, reason="runs are isolated in a forked child on Linux only")

INPUTS = np.arange(12, dtype=np.float32).reshape(2, 6)


def _segfault(inputs: np.ndarray) -> np.ndarray:
    faulthandler.disable()  # a real SIGSEGV, without the child printing a traceback into the test log
    faulthandler._sigsegv()
    raise AssertionError("unreachable")


def _abort(inputs: np.ndarray) -> np.ndarray:
    faulthandler.disable()
    os.abort()


def test_outputs_come_back_exactly() -> None:
    outputs = outputs_isolated(lambda x: x * 2 + 1, INPUTS, "doubling")
    assert outputs.dtype == np.float32 and np.array_equal(outputs, INPUTS * 2 + 1)


def test_the_run_happens_in_another_process() -> None:
    pids = outputs_isolated(lambda x: np.full(len(x), os.getpid()), INPUTS, "pid")
    assert set(pids.tolist()) != {os.getpid()}


@pytest.mark.parametrize(("crash", "named"), [(_segfault, "SIGSEGV"), (_abort, "SIGABRT"),
                                              (lambda x: os.kill(os.getpid(), signal.SIGKILL), "SIGKILL")],
                         ids=["segfault", "abort", "oom-killer"])
def test_a_crash_is_reported_with_the_signal_and_the_caller_lives_on(crash, named: str) -> None:
    with pytest.raises(RuntimeCrashed, match=f"onnx parity run crashed: .* killed by {named}") as caught:
        outputs_isolated(crash, INPUTS, "onnx parity run")
    assert caught.value.exit_code == ExitCode.STAGE_FAILED
    assert np.array_equal(outputs_isolated(lambda x: x, INPUTS, "after"), INPUTS)  # still usable


def test_an_exception_in_the_runtime_is_reported_with_its_type_and_message() -> None:
    def fails(inputs: np.ndarray) -> np.ndarray:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad shape")

    with pytest.raises(StageError, match=r"^coreml parity run: RuntimeError: \[ONNXRuntimeError\].*bad shape$"):
        outputs_isolated(fails, INPUTS, "coreml parity run")


def test_exiting_without_a_result_is_a_crash() -> None:
    with pytest.raises(RuntimeCrashed, match="exited with code 3 and no result"):
        outputs_isolated(lambda x: os._exit(3), INPUTS, "run")


def test_an_interrupt_while_waiting_kills_the_child_and_leaves_no_scratch(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    started = tmp_path / "child.pid"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this test's own, not the /tmp other workers share

    def hangs(inputs: np.ndarray) -> np.ndarray:
        started.write_text(str(os.getpid()))
        time.sleep(600)
        return inputs

    def interrupt_when_started() -> None:
        while not started.exists():
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        outputs_isolated(hangs, INPUTS, "run")
    child = int(started.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped
    assert list(scratch.iterdir()) == []
