"""The shared helpers behind reports, bundles and the local registry: ``output.write_atomically`` (one way to write
a file that readers see whole or not at all) and the registry's index lock (``filelock``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path
from typing import BinaryIO

import pytest
from filelock import FileLock

from efexport.exporter.output import write_atomically
from efexport.exporter.publish import INDEX_KEY, LOCK_FILE, LocalStore


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_text_bytes_and_a_writer_all_land_whole_with_a_shared_mode(tmp_path: Path) -> None:
    text = write_atomically(tmp_path / "deep" / "report.json", "{\"é\": 1}\n")  # missing parents are made
    assert text.read_bytes() == "{\"é\": 1}\n".encode()
    data = write_atomically(tmp_path / "blob.bin", bytes(range(256)))
    assert data.read_bytes() == bytes(range(256))

    def zip_into(f: BinaryIO) -> None:  # what bundles do: a zip writer streaming into the open temporary file
        with zipfile.ZipFile(f, "w") as archive:
            archive.writestr("a.txt", "alpha")

    archive = write_atomically(tmp_path / "b.zip", zip_into)
    assert zipfile.ZipFile(archive).read("a.txt") == b"alpha"
    # mkstemp's 0600 would hide a report or a registry object from the other users of a shared machine
    assert {stat.S_IMODE(p.stat().st_mode) for p in (text, data, archive)} == {0o644}
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "deep") == []


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = write_atomically(tmp_path / "index.json", "old\n")

    def half_then_fail(f: BinaryIO) -> None:
        f.write(b"new, but only ha")
        raise RuntimeError("interrupted mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_atomically(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_a_full_disk_is_an_oserror_that_maps_to_an_output_error(tmp_path: Path) -> None:
    """A file-size limit makes the write fail as a full disk does (EFBIG): the helper removes its temporary
    file, keeps the old file, and raises the OSError that ``write_failure`` turns into an OutputError (exit 4)."""
    script = textwrap.dedent("""
        import json, resource, signal, sys
        from pathlib import Path
        from efexport.exporter.output import write_atomically, write_failure

        target = Path(sys.argv[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        try:
            write_atomically(target, b"x" * (1 << 20))
        except OSError as exc:
            error = write_failure(exc)
            print(json.dumps({"error": str(error), "exit_code": int(error.exit_code)}))
    """)
    target = write_atomically(tmp_path / "bench.json", "old\n")
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    assert reported["exit_code"] == 4 and "file too large" in reported["error"], reported
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="the lock is held from a thread of this process; POSIX flock semantics")
def test_the_index_swap_waits_for_the_registry_lock(tmp_path: Path) -> None:
    """Another publisher holding ``<root>/.index.lock`` (any filelock or flock user) keeps swap_index waiting;
    it writes as soon as the lock is released."""
    store = LocalStore(tmp_path / "registry")
    store.root.mkdir()
    other_publisher = FileLock(store.root / LOCK_FILE)
    other_publisher.acquire()
    outcome: list[bool] = []
    swap = threading.Thread(target=lambda: outcome.append(store.swap_index(b"{}", None)))
    try:
        swap.start()
        swap.join(timeout=0.5)
        assert swap.is_alive() and not outcome, "swap_index went ahead while another publisher held the lock"
        assert not (store.root / INDEX_KEY).exists()
    finally:
        other_publisher.release()
    swap.join(timeout=30)
    assert outcome == [True]
    assert (store.root / INDEX_KEY).read_bytes() == b"{}"
    assert (store.root / LOCK_FILE).exists()  # left in place: every publisher locks the same inode
