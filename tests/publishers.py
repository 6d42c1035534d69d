"""A publisher in its own process (multiprocessing, spawn), for tests/test_publish_concurrency.py.

Each process runs the real ``publish`` against the real store (a directory, or S3 through boto3); only the package
verification is skipped, because the parent verified the package once and these tests are about the index. The
store is wrapped to count the index swaps that won and lost, and to hold every publisher at a barrier just
before its first swap, so that all of them try to swap the same index at the same moment.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any


class AtTheBarrier:
    """The real store; the first index swap waits for every publisher, and each swap's outcome is counted."""

    def __init__(self, inner: Any, barrier: Any) -> None:
        self.inner, self.location, self.barrier = inner, inner.location, barrier
        self.won = self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def swap_index(self, data: bytes, token: str | None) -> bool:
        if self.won + self.lost == 0:
            self.barrier.wait(timeout=120)
        swapped = self.inner.swap_index(data, token)
        if swapped:
            self.won += 1
        else:
            self.lost += 1
        return swapped


def publish_at_once(source: str, registry: str, endpoint: str | None, version: str, barrier: Any,
                    results: Any) -> None:
    """Publish ``source`` under ``version``; put (version, status or error, swaps won, swaps lost) on ``results``."""
    try:
        from efexport.exporter import publish as publishing
        from efexport.exporter.publish import open_store, publish

        publishing._verified_or_refused = lambda *_: {"present": False}  # verified (unsigned) in the parent
        store = AtTheBarrier(open_store(registry, endpoint), barrier)
        result = publish(Path(source), store, version, allow_random_weights=True)
        results.put((version, result.status, store.won, store.lost))
    except BaseException:  # reported to the test, which fails naming it
        barrier.abort()
        results.put((version, "error: " + traceback.format_exc(), 0, 0))
