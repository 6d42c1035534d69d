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

import multiprocessing
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.errors import StageError

ISOLATED = sys.platform == "linux"


class RuntimeCrashed(StageError):
    """The runtime died in the child process: killed by a signal, or exited without a result."""


def _child(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, result: Path, error: Path) -> None:
    # A Ctrl-C reaches the whole process group: the child just dies, the parent reports the interrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        outputs = np.asarray(run(inputs))
    except Exception as exc:
        error.write_text(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    with result.open("wb") as handle:
        np.save(handle, outputs, allow_pickle=False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def outputs_isolated(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, what: str) -> np.ndarray:
    """``run(inputs)`` in a forked child; raise StageError naming ``what`` and the cause if it fails or dies.

    ``run`` should open the runtime itself, so that a model that crashes the runtime while loading is also
    caught in the child."""
    if not ISOLATED:
        return np.asarray(run(inputs))
    with tempfile.TemporaryDirectory(prefix="efexport-run-") as scratch:
        result, error = Path(scratch) / "outputs.npy", Path(scratch) / "error.txt"
        child = multiprocessing.get_context("fork").Process(target=_child, args=(run, inputs, result, error),
                                                            name=f"efexport {what}", daemon=True)
        child.start()
        try:
            child.join()
        except BaseException:  # interrupted while waiting: the child must not outlive us
            child.kill()
            child.join()
            raise
        code = child.exitcode
        if code == 0 and result.is_file():
            return np.load(result, allow_pickle=False)
        if error.is_file():
            raise StageError(f"{what}: {error.read_text()}")
        if code is not None and code < 0:
            raise RuntimeCrashed(f"{what} crashed: the runtime's process was killed by {_signal_name(-code)} "
                                 "while running the reference inputs")
        raise RuntimeCrashed(f"{what}: the runtime's process exited with code {code} and no result")
