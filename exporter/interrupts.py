"""Ctrl-C and SIGTERM: unwind like KeyboardInterrupt, and never lose the request.

Python raises KeyboardInterrupt wherever the interpreter happens to be; inside a weakref callback or a
``__del__`` it is printed and dropped. So the handler also records the signal, and the pipeline checks the
record at every stage boundary.
"""

from __future__ import annotations

import signal

from efexport.exporter.errors import ExitCode

_received: int | None = None


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = signum
    raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def raise_if_interrupted() -> None:
    if _received is not None:
        raise KeyboardInterrupt


def exit_code() -> ExitCode:
    """128 + the signal, as shells report it: 130 for Ctrl-C, 143 for SIGTERM (a plain KeyboardInterrupt: 130)."""
    return ExitCode.TERMINATED if _received == signal.SIGTERM else ExitCode.INTERRUPTED
