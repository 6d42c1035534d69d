"""Apple's Core AI runtime running an ``.aimodel`` asset: the Core AI target's parity runner, and on macOS 27 and
later the operating system's Core AI framework, one runner per compute unit, for parity and latency.

coreai-core's wheel carries a Linux build of the runtime: ``AIModelAsset.executable()`` lowers the asset's program
to ODIX in a temporary folder and runs it on the CPU. That is Apple's code computing our artifact, so it is the
parity gate's runner everywhere; it is a reference build, not a device, so it is never timed
(``is_deployment_runtime`` False). On a Mac whose operating system has the Core AI framework (macOS 27+),
coreai-core uses that framework instead (``USE_OS_COREAI``), with specialization per compute unit: those runners
are deployment runtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from efexport.validate.isolated import ISOLATED, outputs_isolated

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FUNCTION = "main"
# An asset is a folder: the program's bytecode (main.mlirb), its sha256 (main.hash) and this file (author, license,
# description, creator-defined entries, producer). The runtime compiles the bytecode alone.
METADATA_FILE = "metadata.json"


def coreai_core_version() -> str:
    from coreai import _version

    return _version.__version__


def os_framework_available() -> bool:
    """Whether coreai-core runs assets on the operating system's Core AI framework here (macOS 27+), which is what
    specialization per compute unit needs."""
    if sys.platform != "darwin":
        return False
    from coreai.runtime import SpecializationOptions

    return bool(SpecializationOptions.is_supported())


@contextlib.contextmanager
def quiet_runtime() -> Iterator[None]:
    """The native runtime writes a line to the process's stderr each time it loads a function ("ODIE [default]:
    Loading function 'main'"): keep the console for efexport's own progress. What it writes is kept and, if the
    load fails, added to the error, since it may say why."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except Exception as exc:
            os.dup2(saved, 2)
            captured.seek(0)
            said = captured.read().decode(errors="replace").strip()
            if said:
                exc.add_note(f"the Core AI runtime said: {said[-2000:]}")
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class CoreAIRunner:
    """Runs an ``.aimodel`` on Core AI: the asset is loaded and compiled once, on the first call, and kept until
    ``close()`` (or the runner is collected), so repeated calls (latency windows) time inference alone.

    Inputs are the normalised float32 images (K, 3, H, W); each is fed at the asset's own input dtype (float16
    for an FP16 asset) with a batch of one, and the logits come back as float32."""

    static_batch = 1
    threads = None  # the runtime schedules its own threads

    def __init__(self, path: Path, compute_unit: str | None = None, isolated: bool = False) -> None:
        from coreai.authoring.asset import AIModelAsset

        self.path = Path(path)
        # isolated: each call loads and runs the asset in a forked child (Linux), leaving this process without
        # the runtime's threads, so that it can still fork children that run it (a child forked after the
        # Linux build ran here waits forever for threads it does not have). For many assets run once each (the
        # quantize stage's candidates), before the validate stage's isolated run.
        self.isolated = isolated
        self.asset = AIModelAsset.load(self.path)  # reads metadata.json and checks the asset is one
        self.compute_unit = compute_unit
        version = coreai_core_version()
        if compute_unit is None:
            self.backend = "coreai-runtime"
            where = "macOS framework" if os_framework_available() else "Linux reference build, CPU"
            self.runtime_version = f"Apple Core AI runtime from coreai-core {version} ({where})"
            # the parity runner; on a Mac the per-compute-unit runners (runtime_runners) are the ones timed
            self.is_deployment_runtime = False
        else:
            self.backend = f"coreai-{compute_unit}"
            self.runtime_version = f"Core AI on macOS {platform.mac_ver()[0]} (coreai-core {version})"
            self.is_deployment_runtime = True
            self.compute_units = compute_unit.upper()  # the latency schema's compute_units
        self._loop: asyncio.AbstractEventLoop | None = None
        self._function: Any = None
        self._input_dtype: np.dtype | None = None
        self._close: Callable[[], None] | None = None

    def _specialization(self) -> Any:
        if self.compute_unit is None:
            return None
        from coreai.runtime import ComputeUnitKind, SpecializationOptions

        kind = {"cpu": ComputeUnitKind.cpu, "gpu": ComputeUnitKind.gpu,
                "neural-engine": ComputeUnitKind.neural_engine}[self.compute_unit]()
        return SpecializationOptions.from_preferred_compute_unit_kind(kind)

    def _open(self) -> None:
        loop = asyncio.new_event_loop()
        stack = contextlib.AsyncExitStack()
        try:
            with quiet_runtime():
                model = loop.run_until_complete(stack.enter_async_context(
                    self.asset.executable(self._specialization())))
                function = model.load_function(FUNCTION)
            if function is None:
                raise RuntimeError(f"{self.path}: the asset has no function {FUNCTION!r}")
            names = (list(function.desc.input_names), list(function.desc.output_names))
            if names != ([INPUT_NAME], [OUTPUT_NAME]):
                raise RuntimeError(f"{self.path}: function {FUNCTION!r} takes {names[0]} and returns {names[1]}, "
                                   f"not [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]")
            self._input_dtype = np.dtype(function.desc.input_descriptor(INPUT_NAME).dtype)
        except BaseException:
            _release(loop, stack)
            raise
        self._loop, self._function = loop, function
        self._close = weakref.finalize(self, _release, loop, stack)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        from coreai.runtime import NDArray

        if self.isolated and ISOLATED:
            return outputs_isolated(CoreAIRunner(self.path, self.compute_unit), inputs, f"{self.backend} run")
        if self._function is None:
            self._open()
        logits = []
        for single in inputs:
            feed = NDArray(np.ascontiguousarray(single[None], dtype=self._input_dtype))
            result = self._loop.run_until_complete(self._function({INPUT_NAME: feed}))
            logits.append(np.asarray(result[OUTPUT_NAME].numpy(), dtype=np.float32).reshape(1, -1))
        return np.concatenate(logits)

    def close(self) -> None:
        """Release the compiled model (and the temporary folder the Linux build compiled it into)."""
        if self._close is not None:
            self._close()
            self._function = self._loop = self._close = None


def _release(loop: asyncio.AbstractEventLoop, stack: contextlib.AsyncExitStack) -> None:
    with quiet_runtime():
        loop.run_until_complete(stack.aclose())
    loop.close()


COMPUTE_UNITS = ("cpu", "gpu", "neural-engine")


def runtime_runners(path: Path) -> list[CoreAIRunner]:
    """On macOS 27+ with the Core AI framework: one runner per compute unit (parity and latency on each); none
    elsewhere (the parity runner, ``CoreAIRunner(path)``, is the Linux reference build there)."""
    if not os_framework_available():
        return []
    return [CoreAIRunner(path, unit) for unit in COMPUTE_UNITS]
