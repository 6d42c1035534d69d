"""Writing artifacts so that nothing half-written is ever left where a finished artifact belongs.

Everything is written into a fresh staging directory beside the destination and moved into place with a
rename only once it is complete and verified; on any error (or interrupt) the staging directory goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from efexport.exporter.errors import OutputError

_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large (a file-size limit)", errno.EROFS: "read-only filesystem"}


def write_failure(exc: BaseException) -> OutputError | None:
    """An OutputError when ``exc`` (or what caused it) is a write that the disk refused, else None: a full disk
    is the user's to fix, not a failed tool."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _NO_ROOM:
            where = f" {cause.filename}" if cause.filename else " the output"
            return OutputError(f"cannot write{where}: {_NO_ROOM[cause.errno]}; nothing was left behind")
        if isinstance(cause, RuntimeError) and "[MIL FileWriter]" in str(cause):  # coremltools hides the errno
            return OutputError(f"cannot write the Core ML weights ({cause}): is the disk full or a file-size limit "
                               "set? Nothing was left behind")
        if "IO failure on output stream" in str(cause):  # LLVM's serializer (Core AI's) exits on a refused write
            return OutputError(f"cannot write the Core AI asset ({cause}): is the disk full or a file-size limit "
                               "set? Nothing was left behind")
        cause = cause.__cause__ or cause.__context__
    return None


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


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where that is not available
    (another OS, an old kernel or libc, a filesystem without it), so the caller can fall back."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(b))


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
    if exchange_paths(staging, final):  # one atomic step: readers see the old artifact or the new one
        return  # the old artifact is now in ``staging``, which the caller removes
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


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so that a rename into it survives a power cut, not only a crash."""
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


FileContent = str | bytes | Callable[[BinaryIO], object]


def write_atomically(path: Path, content: FileContent, mode: int = 0o644) -> Path:
    """Write ``content`` to ``path`` so that readers see the old file or the whole new one, never part of it: a
    temporary file beside ``path`` (same file system, so the rename is atomic), flushed and fsynced, given
    ``mode``, renamed over ``path``, then the directory fsynced. On any error or interrupt the temporary file is
    removed and ``path`` is untouched.

    ``content`` is text (written as UTF-8), bytes, or a callable that writes into the open binary file (a zip
    writer, a streamed copy). ``mode`` replaces mkstemp's private 0600, which would hide a report or a registry
    object from the other users of a shared machine; 0644 is what the usual umask gives a new file.

    OSError (a full disk included) propagates unchanged: each caller turns it into its own error (an
    OutputError, exit 4, for an artifact or report; a PublishError for a registry), see ``write_failure``.
    There is no maintained library for this: ``atomicwrites`` is archived, and the standard library has none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path
