"""Running an exported model on the reference inputs in a child process.

A runtime is native code fed a model file that may come from a stranger (``efexport verify``) or from a
converter that just produced something odd. If it crashes (a segfault, an abort, the OOM killer), only the
child dies: the stage that asked fails with the signal named, the artifact is not written, and
``efexport all`` carries on with its other targets.

The child is forked (Linux), so it starts at once with everything already imported; it opens its own session
and writes the outputs to a private temporary file. Elsewhere (macOS, where forking a process that loaded
Apple's frameworks is unsafe) the run stays in this process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from efexport.exporter.errors import StageError

ISOLATED = sys.platform == "linux"


class RuntimeCrashed(StageError):
    """The runtime died in the child process: killed by a signal, or exited without a result. ``said``: the end
    of what the child wrote to stderr, where it was captured (``call_isolated``)."""

    def __init__(self, message: str, said: str = "") -> None:
        super().__init__(message + (f"; it said: {said}" if said else ""))
        self.said = said


def _child(work: Callable[[np.ndarray], tuple[np.ndarray, dict]], inputs: np.ndarray, scratch: Path) -> None:
    # A Ctrl-C reaches the whole process group: the child just dies, the parent reports the interrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        outputs, report = work(inputs)
        (scratch / "report.json").write_text(json.dumps(report))
    except Exception as exc:
        (scratch / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    with (scratch / "outputs.npy").open("wb") as handle:
        np.save(handle, np.asarray(outputs), allow_pickle=False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _forked(target: Callable[..., None], args: tuple, what: str) -> int | None:
    """Run ``target(*args)`` in a forked child and wait for it; its exit code (negative: the signal that killed
    it). Interrupted while waiting, the child is killed first: it must not outlive us."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args, name=f"efexport {what}",
                                                        daemon=True)
    child.start()
    try:
        child.join()
    except BaseException:
        child.kill()
        child.join()
        raise
    return child.exitcode


def run_isolated(work: Callable[[np.ndarray], tuple[np.ndarray, dict]], inputs: np.ndarray,
                 what: str) -> tuple[np.ndarray, dict]:
    """``work(inputs)`` -> (outputs, a JSON-able report of the run) in a forked child; raise StageError naming
    ``what`` and the cause if it fails or dies.

    ``work`` should open the runtime itself, so that a model that crashes the runtime while loading is also
    caught in the child."""
    if not ISOLATED:
        outputs, report = work(inputs)
        return np.asarray(outputs), report
    with tempfile.TemporaryDirectory(prefix="efexport-run-") as directory:
        scratch = Path(directory)
        code = _forked(_child, (work, inputs, scratch), what)
        if code == 0 and (scratch / "outputs.npy").is_file():
            report = json.loads((scratch / "report.json").read_text())
            return np.load(scratch / "outputs.npy", allow_pickle=False), report
        if (scratch / "error.txt").is_file():
            raise StageError(f"{what}: {(scratch / 'error.txt').read_text()}")
        if code is not None and code < 0:
            raise RuntimeCrashed(f"{what} crashed: the runtime's process was killed by {_signal_name(-code)} "
                                 "while running the reference inputs")
        raise RuntimeCrashed(f"{what}: the runtime's process exited with code {code} and no result")


def outputs_isolated(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, what: str) -> np.ndarray:
    """``run(inputs)`` in a forked child, as ``run_isolated``, when only the outputs matter."""
    return run_isolated(lambda batch: (run(batch), {}), inputs, what)[0]


def _call_child(work: Callable[[], dict], scratch: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # native code that aborts writes why on stderr (LLVM: "LLVM ERROR: IO failure on output stream: ..."), then
    # exits: keep it for the parent's error message
    with (scratch / "stderr.txt").open("wb") as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            result = work()
        except Exception as exc:
            (scratch / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
            sys.exit(1)
    (scratch / "result.json").write_text(json.dumps(result))


def call_isolated(work: Callable[[], dict], what: str) -> dict:
    """``work()`` -> a JSON-able dict, in a forked child (as ``run_isolated``), for native code that writes files
    and may abort the process instead of raising (a converter's serializer on a full disk). Raise StageError (an
    exception in ``work``) or RuntimeCrashed (the child died; ``said`` holds the end of its stderr)."""
    if not ISOLATED:
        return work()
    with tempfile.TemporaryDirectory(prefix="efexport-call-") as directory:
        scratch = Path(directory)
        code = _forked(_call_child, (work, scratch), what)
        if code == 0 and (scratch / "result.json").is_file():
            return json.loads((scratch / "result.json").read_text())
        if (scratch / "error.txt").is_file():
            raise StageError(f"{what}: {(scratch / 'error.txt').read_text()}")
        said = (scratch / "stderr.txt").read_text(errors="replace").strip()[-1000:] \
            if (scratch / "stderr.txt").is_file() else ""
        how = f"was killed by {_signal_name(-code)}" if code is not None and code < 0 else f"exited with code {code}"
        raise RuntimeCrashed(f"{what}: the process {how} and gave no result", said)
