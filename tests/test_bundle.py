"""Bundles: reproducible bytes, the sha256sum sidecar, verification of a bundle, and refusal of unsafe members."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from efexport.exporter.bundle import MAX_COMPRESSION_RATIO, opened_bundle, write_bundle
from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, read_manifest
from efexport.exporter.verify import verify_package
from tests.helpers import run_cli
from tests.packages import exported_again, exported_package

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_package("onnx", tmp_path_factory)[0]  # shared: tests here copy it before changing anything


@pytest.fixture(scope="module")
def bundle(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(package, tmp_path_factory.mktemp("bundles")).path


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None] | None = None,
             extra: list[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> Path:
    """Copy a bundle member by member, replacing (bytes) or dropping (None) the named members."""
    change = change or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = change.get(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info, data)
        for info, data in extra:
            dst.writestr(info, data)
    return target


def test_same_package_gives_the_same_bytes_wherever_and_whenever(package: Path, bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy" / package.name
    shutil.copytree(package, copy)
    for path in copy.rglob("*"):  # other timestamps and permissions must not reach the bundle
        os.utime(path, (1_000_000_000, 1_000_000_000))
    again = write_bundle(copy, tmp_path / "again")
    assert again.path.name == "efficientformer-l1-onnx-fp32.zip"
    assert again.path.read_bytes() == bundle.read_bytes()
    assert again.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()


def test_members_are_sorted_under_one_folder_with_fixed_dates(package: Path, bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    manifest = read_manifest(package)
    expected = sorted([*manifest["files"], MANIFEST_FILE])
    assert names == [f"efficientformer-l1-onnx-fp32/{name}" for name in expected]
    assert "efficientformer-l1-onnx-fp32/README.md" in names
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {stat.S_IMODE(info.external_attr >> 16) for info in infos} == {0o644}


def test_checksum_file_is_sha256sum_format(bundle: Path) -> None:
    result = subprocess.run(["sha256sum", "-c", bundle.name + ".sha256"], cwd=bundle.parent, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{bundle.name}: OK"


def test_bundle_verifies_and_matches_its_package(bundle: Path) -> None:
    report = verify_package(bundle)
    assert report.passed, report.problems
    assert report.path == str(bundle)
    assert report.package["name"] == "efficientformer-l1-onnx-fp32"
    assert report.parity is not None and report.parity.max_abs <= 1e-4


def test_tampered_member_is_caught_by_hash_and_parity(bundle: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(bundle) as archive:
        model = bytearray(archive.read("efficientformer-l1-onnx-fp32/model.onnx"))
    model[-100] ^= 0xFF  # inside the last initializer: still loads, computes something else
    tampered = _rewrite(bundle, tmp_path / bundle.name, {"efficientformer-l1-onnx-fp32/model.onnx": bytes(model)})
    report = verify_package(tampered)
    assert not report.passed
    assert any("model.onnx: sha256 differs" in p for p in report.problems)


def test_a_changed_bundle_fails_against_its_sidecar(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / bundle.name
    shutil.copy(bundle, copy)
    shutil.copy(bundle.with_name(bundle.name + ".sha256"), tmp_path)
    card = "efficientformer-l1-onnx-fp32/README.md"
    with zipfile.ZipFile(bundle) as archive:
        text = archive.read(card)
    _rewrite(bundle, copy, {card: text.replace(b"EfficientFormer", b"EfficientFormar", 1)})
    problems = verify_package(copy).problems
    assert any("differs from efficientformer-l1-onnx-fp32.zip.sha256" in p for p in problems)
    assert any("README.md: sha256 differs from the manifest" in p for p in problems)


def test_missing_member_and_renamed_folder_are_reported(bundle: Path, tmp_path: Path) -> None:
    dropped = _rewrite(bundle, tmp_path / "dropped.zip", {"efficientformer-l1-onnx-fp32/reference_io.npz": None})
    assert "missing file reference_io.npz" in verify_package(dropped).problems
    renamed = tmp_path / "renamed.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(renamed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename.replace("onnx-fp32", "onnx-fp16", 1), src.read(info))
    assert any("does not match the package name" in p for p in verify_package(renamed).problems)


@pytest.mark.parametrize(("member", "reason"), [
    ("efficientformer-l1-onnx-fp32/../../escaped.txt", "'..' segment"),
    ("/tmp/absolute-escape.txt", "absolute"),
    ("efficientformer-l1-onnx-fp32\\..\\escaped.txt", "non-POSIX"),
    ("efficientformer-l1-onnx-fp32/./README.md", "'.' or empty segment"),  # a second name for a member
])
def test_escaping_members_are_refused_before_anything_is_extracted(bundle: Path, tmp_path: Path, member: str,
                                                                    reason: str) -> None:
    evil = _rewrite(bundle, tmp_path / "evil.zip", extra=[(member, b"pwned")])
    with pytest.raises(VerifyError, match=reason):
        verify_package(evil)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    result = run_cli("verify", str(evil))
    assert result.returncode == 6 and "refused before extracting anything" in result.stderr


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # writing the duplicate is the point
def test_links_duplicates_bombs_and_non_zips_are_refused(bundle: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("efficientformer-l1-onnx-fp32/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(VerifyError, match="symbolic link"):
        verify_package(_rewrite(bundle, tmp_path / "link.zip", extra=[(link, b"/etc/passwd")]))
    with pytest.raises(VerifyError, match="appears twice"):
        verify_package(_rewrite(bundle, tmp_path / "dup.zip", extra=[("efficientformer-l1-onnx-fp32/README.md", b"x")]))
    bomb = _rewrite(bundle, tmp_path / "bomb.zip", extra=[("efficientformer-l1-onnx-fp32/zeros",
                                                           bytes(MAX_COMPRESSION_RATIO * 4096))])
    with pytest.raises(VerifyError, match="zip bomb"):
        verify_package(bomb)
    other = _rewrite(bundle, tmp_path / "two.zip", extra=[("another-folder/x", b"x")])
    with pytest.raises(VerifyError, match="one top folder"):
        verify_package(other)
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VerifyError, match="not a zip bundle"):
        verify_package(not_zip)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    with pytest.raises(VerifyError):
        verify_package(truncated)


def test_extraction_is_private_and_removed(bundle: Path) -> None:
    with opened_bundle(bundle) as directory:
        assert (directory / MANIFEST_FILE).is_file()
        scratch = directory.parent
    assert not scratch.exists()


def test_bundle_cli_writes_and_verify_cli_accepts(package: Path, tmp_path: Path) -> None:
    result = run_cli("bundle", str(package), "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "efficientformer-l1-onnx-fp32.zip"
    assert written.is_file() and (tmp_path / "efficientformer-l1-onnx-fp32.zip.sha256").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [written.name, written.name + ".sha256"]  # no temp files
    result = run_cli("verify", str(written), "--report", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    assert '"passed": true' in (tmp_path / "report.json").read_text()


def test_bundle_cli_refuses_a_package_that_does_not_verify(package: Path, tmp_path: Path) -> None:
    broken = tmp_path / "pkg" / package.name
    shutil.copytree(package, broken)
    (broken / "README.md").write_text("edited\n")
    result = run_cli("bundle", str(broken), "--out", str(tmp_path / "out"))
    assert result.returncode == 6 and "README.md: sha256 differs" in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_exports_of_the_same_inputs_differ_only_in_measured_figures(
        package: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    again = exported_again(tmp_path_factory)
    first, second = read_manifest(package)["files"], read_manifest(again)["files"]
    assert first.keys() == second.keys()
    differing = sorted(name for name in first if first[name]["sha256"] != second[name]["sha256"])
    assert differing == ["README.md"]  # the card shows the measured latency; the model file does not carry it
