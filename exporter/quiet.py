"""Third-party chatter kept off efexport's console: converters print progress on stdout (which ``--json`` owns)
or stderr, log warnings about versions and packages we do not use, and raise Python warnings."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quieted(*loggers: str, stream: str = "stdout") -> Iterator[None]:
    """Within the block: the named loggers at ERROR, Python warnings ignored, and what is written to ``stream``
    (``"stdout"`` or ``"stderr"``, Python-level writes only) dropped."""
    named = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in named]
    for logger in named:
        logger.setLevel(logging.ERROR)
    redirect = contextlib.redirect_stdout if stream == "stdout" else contextlib.redirect_stderr
    try:
        with warnings.catch_warnings(), redirect(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(named, levels, strict=True):
            logger.setLevel(level)
