"""Writing artifacts so that nothing half-written is ever left where a finished artifact belongs.

Everything is written into a fresh staging directory beside the destination and moved into place with a
rename only once it is complete and verified; on any error (or interrupt) the staging directory goes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.errors import OutputError


def check_output_root(root: Path) -> None:
    """Fail before any work when the output root cannot become a writable directory."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write to {root}: {existing} is not a directory")
    try:  # a real probe: os.access says yes to root even on a read-only mount or a pseudo-filesystem
        os.rmdir(tempfile.mkdtemp(prefix=".efexport-probe-", dir=existing))
    except OSError as exc:
        raise OutputError(f"cannot write to {root}: {existing} is not writable ({exc.strerror or exc})") from None


def check_destination(final: Path, force: bool) -> None:
    """Refuse early, before any work, when the destination exists and --force was not given."""
    if final.exists() and not force:
        raise OutputError(f"{final} already exists; pass --force to replace it")
    if final.exists() and not final.is_dir():
        raise OutputError(f"{final} exists and is not a directory")


def _make_staging(final: Path) -> Path:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the artifact's mode
    return staging


def _move_into_place(staging: Path, final: Path, force: bool) -> None:
    if not final.exists():
        try:
            os.rename(staging, final)  # fails if another export finished first: never a mixed artifact
            return
        except OSError:
            if not force:
                raise OutputError(f"{final} appeared while exporting (another export?); pass --force to replace it")\
                    from None
    if not force:
        raise OutputError(f"{final} already exists; pass --force to replace it")
    retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.replaced-", dir=final.parent))
    os.rename(final, retired / final.name)
    try:
        os.rename(staging, final)
    except OSError:
        os.rename(retired / final.name, final)  # put the old artifact back
        raise
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def staged_output(final: Path, force: bool) -> Iterator[Path]:
    """Yield a staging directory; on normal exit it replaces ``final``, on any exception it is removed."""
    check_destination(final, force)
    missing_parents = [p for p in (final.parent, *final.parent.parents) if not p.exists()]  # deepest first
    staging = _make_staging(final)
    completed = False
    try:
        yield staging
        _move_into_place(staging, final, force)
        completed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not completed:  # leave no empty directories behind either
            for parent in missing_parents:
                try:
                    parent.rmdir()
                except OSError:
                    break


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: readers see the old file or
    the whole new one, never part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path
