"""Bundles: a package directory as one reproducible zip file, and the safe way back from one.

Writing: the same package gives the same bytes. Members are the manifest's files plus manifest.json, and the
package's signature (``model.sig``) and provenance statement (``provenance.intoto.json``) when it has them, under
one top folder named after the package, in sorted order, with a fixed timestamp (1980-01-01, zip's epoch),
fixed permissions (0644, 0755 for executables) and fixed compression; nothing of the machine or the moment
goes in. ``NAME.zip.sha256`` beside it is in ``sha256sum`` format, so ``sha256sum -c`` checks it.

Reading: every member is checked before anything is extracted. Absolute paths, ``..`` segments,
backslashes, links, duplicates, members outside the top folder, and sizes past the limit (zip bombs) are
refused by name.
"""

from __future__ import annotations

import contextlib
import lzma
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from efexport.exporter.errors import OutputError, VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, sha256_of
from efexport.exporter.manifest_model import Manifest
from efexport.exporter.manifest_schema import load_manifest
from efexport.exporter.output import write_atomically
from efexport.exporter.signing import UNLISTED_FILES

BUNDLE_SUFFIX = ".zip"
CHECKSUM_SUFFIX = ".sha256"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MAX_UNCOMPRESSED_BYTES = 16 << 30  # l7 fp32 is ~0.35 GB; anything near this is not a package
MAX_COMPRESSION_RATIO = 200  # float weights compress ~1.1x; a ratio like this is a zip bomb
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str
    bytes: int
    checksum_file: Path

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.bytes,
                "checksum_file": str(self.checksum_file)}


def bundle_name(manifest: Manifest) -> str:
    return manifest.package.name + BUNDLE_SUFFIX


def _member_info(arcname: str, source: Path) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, ZIP_EPOCH)
    info.create_system = 3  # unix, so the mode bits below are honoured by unzip
    mode = 0o755 if source.stat().st_mode & stat.S_IXUSR else 0o644
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    info.file_size = source.stat().st_size  # lets zipfile choose zip64 up front for large members
    return info


def _write_zip(package: Path, members: list[str], top: str, target: BinaryIO) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name in members:
            source = package / name
            with source.open("rb") as src, archive.open(_member_info(f"{top}/{name}", source), "w") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)


def write_bundle(package: Path, out_dir: Path) -> Bundle:
    """Bundle the verified package directory ``package`` into ``out_dir/<package name>.zip`` (+ ``.sha256``).

    Only the files the manifest lists, the manifest, and the signature and provenance statement when present
    go in; a package that does not verify is refused by the caller, not silently bundled here.
    """
    manifest = load_manifest(package)
    name = bundle_name(manifest)
    top = name.removesuffix(BUNDLE_SUFFIX)
    made_after = [f for f in UNLISTED_FILES if f not in manifest.files and (package / f).is_file()]
    members = sorted([*manifest.files, MANIFEST_FILE, *made_after])
    missing = [m for m in members if not (package / m).is_file()]
    if missing:
        raise VerifyError(f"{package}: cannot bundle, missing {', '.join(missing[:3])}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / name
        write_atomically(target, lambda f: _write_zip(package, members, top, f))
        digest = sha256_of(target)
        checksum = out_dir / (name + CHECKSUM_SUFFIX)
        write_atomically(checksum, f"{digest}  {name}\n")
    except OSError as exc:
        raise OutputError(f"cannot write the bundle to {out_dir}: {exc.strerror or exc}") from None
    return Bundle(target, digest, target.stat().st_size, checksum)


def checksum_problems(bundle: Path) -> list[str]:
    """Compare a bundle with its ``.sha256`` sidecar when there is one (a missing sidecar is not a problem)."""
    sidecar = bundle.with_name(bundle.name + CHECKSUM_SUFFIX)
    if not sidecar.is_file():
        return []
    fields = sidecar.read_text(errors="replace").split()
    if len(fields) != 2 or fields[1].lstrip("*") != bundle.name or len(fields[0]) != 64:
        return [f"{sidecar.name}: not a sha256sum line for {bundle.name}"]
    if fields[0].lower() != sha256_of(bundle):
        return [f"{bundle.name}: sha256 differs from {sidecar.name} (modified or truncated?)"]
    return []


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    path = PurePosixPath(name)
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute or non-POSIX path"
    if not path.parts:  # "", ".", "./": no file or folder to extract to
        return "an empty path"
    if not name.isprintable():  # line breaks, NULs, bidi overrides: no package file has them
        return "a name with control or invisible characters"
    if {".", ""} & set(name.rstrip("/").split("/")):  # "top/./x" would be a second name for "top/x"
        return "a '.' or empty segment (not a normalised path)"
    if ".." in path.parts:
        return "a '..' segment (it would escape the bundle's folder)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted"
    return None


def check_members(archive: zipfile.ZipFile, where: str) -> str:
    """Every member is safe to extract; returns the single top folder. Raises VerifyError naming the member."""
    infos = archive.infolist()
    if not infos:
        raise VerifyError(f"{where}: the bundle is empty")
    seen: set[str] = set()
    tops: set[str] = set()
    total = 0
    for info in infos:
        reason = _unsafe_reason(info)
        if reason:
            raise VerifyError(f"{where}: refused before extracting anything: member {info.filename!r} is {reason}")
        key = info.filename.rstrip("/")
        if key in seen:
            raise VerifyError(f"{where}: refused: member {info.filename!r} appears twice")
        seen.add(key)
        tops.add(PurePosixPath(key).parts[0])
        total += info.file_size
        ratio = info.file_size / info.compress_size if info.compress_size else 0.0
        if ratio > MAX_COMPRESSION_RATIO:
            raise VerifyError(f"{where}: refused: member {info.filename!r} expands {ratio:.0f}x (a zip bomb?)")
    if total > MAX_UNCOMPRESSED_BYTES:
        raise VerifyError(f"{where}: refused: {total} bytes uncompressed, more than the {MAX_UNCOMPRESSED_BYTES} limit")
    if len(tops) != 1 or any(info.filename.rstrip("/") == next(iter(tops)) and not info.is_dir() for info in infos):
        raise VerifyError(f"{where}: not an efexport bundle: expected one top folder, found {sorted(tops)[:3]}")
    return tops.pop()


def _extract(archive: zipfile.ZipFile, into: Path) -> None:
    """Extract member by member, counting real bytes: a header that lies about sizes cannot exceed the limit."""
    written = 0
    for info in archive.infolist():
        target = into.joinpath(*PurePosixPath(info.filename).parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, target.open("wb") as dst:
            for block in iter(lambda src=src: src.read(_CHUNK), b""):
                written += len(block)
                if written > MAX_UNCOMPRESSED_BYTES:
                    raise VerifyError(f"{info.filename}: extraction passed the {MAX_UNCOMPRESSED_BYTES}-byte limit")
                dst.write(block)
        if (info.external_attr >> 16) & stat.S_IXUSR:
            target.chmod(0o755)


@contextlib.contextmanager
def opened_bundle(bundle: Path) -> Iterator[Path]:
    """Yield the package directory extracted from ``bundle`` into a private temporary folder (removed after)."""
    where = str(bundle)
    if not bundle.is_file():
        raise VerifyError(f"{where}: no such bundle file")
    try:
        archive = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # ValueError: a member name that is not UTF-8
        raise VerifyError(f"{where}: not a zip bundle ({exc})") from None
    with archive, tempfile.TemporaryDirectory(prefix="efexport-bundle-") as scratch:
        top = check_members(archive, where)
        try:
            _extract(archive, Path(scratch))
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError,
                NotImplementedError) as exc:  # CRC errors, truncation, corrupt streams, unknown compression
            raise VerifyError(f"{where}: damaged bundle: {exc}") from None
        yield Path(scratch) / top


def is_bundle(path: Path) -> bool:
    return path.suffix == BUNDLE_SUFFIX and not path.is_dir()
