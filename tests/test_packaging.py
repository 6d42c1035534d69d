"""Packaging: the wheel holds every efexport package (and nothing of tests/ or benchmarks/), and a wheel installed
into a fresh environment exports ONNX on its own, with the recipe it ships, without the extras.

The installed run is the user's path: ``pip wheel`` from a clean copy of the sources, ``pip install`` into a new
virtual environment, the ``efexport`` console script run from a directory outside the repository. The fresh
environment gets efexport's dependencies as symlinks to the entries of this environment's site-packages, minus three
things: efexport's own editable install (its ``__editable__`` finder would import the repository instead of the
wheel), coremltools and Core AI's packages (the ``[coreml]`` and ``[coreai]`` extras: absent, as in a base install,
metadata included), and every ``.pth`` file (none of the dependencies needs one at run time).
``--system-site-packages`` or a ``.pth`` naming this site-packages would not do: the first shares the base
interpreter's packages, not this environment's, and the second would still show coremltools and the editable
install's metadata to ``importlib.metadata``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from efexport.exporter.manifest import sha256_of

pytestmark = pytest.mark.xdist_group("wheel")  # builds one wheel and one environment; keep them on one worker

REPO = Path(__file__).resolve().parent.parent
PACKAGE_ROOTS = ("exporter", "validate", "recipes")  # the folders pyproject maps into the efexport namespace
NOT_PACKAGED = ("tests", "benchmarks")  # run from the repository only
# Files under the package folders that stay in the repository: the recipe schema's documentation.
NOT_SHIPPED = {"recipes/README.md"}
# What is left out of a build's copy of the sources: VCS data, environments, and earlier builds (setuptools
# reuses a build/lib it finds, so modules deleted since would reappear in the wheel).
BUILD_IGNORE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
                "artifacts", "shared")
EXTRA_MESSAGE = "pip install 'efexport[coreml]'"
# The extras' own distributions (modules and dist-info folders start so), left out of the base install.
EXTRA_MODULES = ("coremltools", "coreai", "coreai_core", "coreai_torch", "coreai_opt")
PROBE_ENV = "EFEXPORT_TEST_IMPORT_PROBE"
# Loaded through a .pth in the fresh environment only: with PROBE_ENV set, each process writes, as it exits, the
# file of every efexport module it imported, so the test sees what the console script itself ran.
PROBE_MODULE = '''"""tests/test_packaging.py: where this process's efexport modules came from, written at exit."""
import atexit
import json
import os
import sys


def _dump() -> None:
    found = {}
    for name, module in list(sys.modules.items()):
        if name == "efexport" or name.startswith("efexport."):
            found[name] = [getattr(module, "__file__", None), [str(p) for p in getattr(module, "__path__", [])]]
    path = os.path.join(os.environ["PROBE_ENV"], f"{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"argv": sys.argv, "modules": found}, f)


if os.environ.get("PROBE_ENV"):
    atexit.register(_dump)
'''.replace("PROBE_ENV", PROBE_ENV)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _package_folders() -> dict[str, Path]:
    """efexport.<dotted path> -> folder, for every folder under the package roots holding an __init__.py."""
    found = {}
    for root in PACKAGE_ROOTS:
        for init in sorted((REPO / root).rglob("__init__.py")):
            if "__pycache__" not in init.parts:
                found["efexport." + ".".join(init.parent.relative_to(REPO).parts)] = init.parent
    return found


def _repository_files() -> set[str]:
    """Paths (relative to the repository) of every file under the package roots, bytecode excluded."""
    return {p.relative_to(REPO).as_posix() for root in PACKAGE_ROOTS for p in (REPO / root).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would put the repository or another environment on sys.path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")}
    return env | {"PYTHONNOUSERSITE": "1"} | extra


# --- the packages list -------------------------------------------------------------------------------------------


def test_packages_list_is_every_package_folder() -> None:
    listed = _pyproject()["tool"]["setuptools"]["packages"]
    expected = set(_package_folders())
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(p for p in listed if listed.count(p) > 1)}"
    assert set(listed) == expected, (f"add to [tool.setuptools] packages in pyproject.toml: "
                                     f"{sorted(expected - set(listed))}; listed without a package folder: "
                                     f"{sorted(set(listed) - expected)}")
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == {"efexport": "."}


def test_every_folder_with_python_code_is_a_package() -> None:
    """A folder of modules without __init__.py is a namespace package that setuptools' explicit list never
    names: it would be silently missing from the wheel."""
    bare = sorted({p.parent.relative_to(REPO).as_posix() for root in PACKAGE_ROOTS for p in (REPO / root).rglob("*.py")
                   if "__pycache__" not in p.parts and not (p.parent / "__init__.py").is_file()})
    assert not bare, f"folders of modules without an __init__.py: {bare}"


def test_tests_and_benchmarks_are_not_packaged() -> None:
    listed = _pyproject()["tool"]["setuptools"]["packages"]
    shipped = [p for p in listed if p.split(".")[1] in NOT_PACKAGED or p.split(".")[1] not in PACKAGE_ROOTS]
    assert not shipped, f"packaged from outside {PACKAGE_ROOTS}: {shipped}"


# --- the wheel ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel`` builds from a clean copy of the working tree (not the repository itself: its
    build/ folder may hold modules deleted since, which setuptools would ship)."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*BUILD_IGNORE), symlinks=True)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", str(source), "-w", str(where / "dist")],
                           capture_output=True, text=True, timeout=300, env=_clean_env())
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (where / "dist").glob("efexport-*.whl")
    return path


def test_wheel_ships_every_package_file_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"efexport-{_pyproject()['project']['version']}.dist-info/"
    outside = sorted(n for n in names if not n.startswith(("efexport/", dist_info)))
    assert not outside, f"the wheel holds files outside the efexport namespace: {outside[:10]}"
    shipped = {n.removeprefix("efexport/") for n in names if n.startswith("efexport/")}
    expected = _repository_files() - NOT_SHIPPED
    assert not expected - shipped, ("missing from the wheel (a package or package-data glob to add to pyproject): "
                                    f"{sorted(expected - shipped)}")
    assert not shipped - expected, f"in the wheel but not in the sources: {sorted(shipped - expected)}"
    assert not {n.split("/")[0] for n in shipped} & set(NOT_PACKAGED)
    entry_points = zipfile.ZipFile(wheel).read(dist_info + "entry_points.txt").decode()
    assert "efexport = efexport.exporter.cli:main" in entry_points


# --- installed from the wheel ------------------------------------------------------------------------------------


def _dependency_entries() -> dict[str, Path]:
    """Name -> path of what this environment's site-packages hold, less efexport itself, the [coreml] and [coreai]
    extras' own packages and .pth files (see the module docstring)."""
    entries: dict[str, Path] = {}
    for directory in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]):
        for entry in sorted(Path(directory).iterdir()):
            name = entry.name.lower()
            if (name.startswith(("__editable__", "efexport", "_efexport", *EXTRA_MODULES)) or name.endswith(".pth")
                    or name == "__pycache__"):
                continue
            entries.setdefault(entry.name, entry)
    return entries


class Installed:
    """A fresh virtual environment with the wheel installed and the dependencies of a base install."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / ("Scripts" if os.name == "nt" else "bin")
        self.python = self.bin / "python"
        self.site_packages = Path(subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, check=True, env=_clean_env()).stdout.strip())

    def run(self, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        """The installed console script, from ``cwd``, with PATH leading to this environment."""
        return subprocess.run([str(self.bin / "efexport"), *args], capture_output=True, text=True, cwd=cwd,
                              timeout=600, env=_clean_env(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", **env))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("fresh-venv") / "venv"
    assert not root.is_relative_to(REPO), "the fresh environment must live outside the repository"
    # no pip inside: this environment's pip installs into it (--python), which is all a venv's pip would do
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, env=_clean_env(),
                   timeout=120)
    venv = Installed(root)
    for name, entry in _dependency_entries().items():
        (venv.site_packages / name).symlink_to(entry, target_is_directory=entry.is_dir())
    (venv.site_packages / "_efexport_import_probe.py").write_text(PROBE_MODULE)
    (venv.site_packages / "_efexport_import_probe.pth").write_text("import _efexport_import_probe\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300,
                             env=_clean_env())
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def test_installed_efexport_imports_from_the_fresh_environment(installed: Installed, tmp_path: Path) -> None:
    script = ("import importlib.util, json, sys, efexport.exporter, efexport.validate, efexport.exporter.recipes as r\n"
              "print(json.dumps({'exporter': efexport.exporter.__file__, 'validate': efexport.validate.__file__,\n"
              "    'namespace': list(sys.modules['efexport'].__path__), 'recipes': str(r.RECIPES_DIR),\n"
              "    'coremltools': importlib.util.find_spec('coremltools') is not None, 'path': sys.path}))")
    shown = subprocess.run([str(installed.python), "-c", script], capture_output=True, text=True, cwd=tmp_path,
                           env=_clean_env(), timeout=120)
    assert shown.returncode == 0, shown.stderr
    where = json.loads(shown.stdout)
    site = installed.site_packages.resolve()
    for key in ("exporter", "validate", "recipes"):
        assert Path(where[key]).resolve().is_relative_to(site / "efexport"), (key, where[key])
    assert [Path(p).resolve() for p in where["namespace"]] == [site / "efexport"]
    assert not any(Path(p).resolve().is_relative_to(REPO) for p in where["path"] if p), where["path"]
    assert where["coremltools"] is False  # a base install: the [coreml] extra is not there


def test_base_install_exports_onnx_with_its_packaged_recipe(installed: Installed, tmp_path: Path) -> None:
    work, probe = tmp_path / "work", tmp_path / "probe"
    work.mkdir()
    probe.mkdir()
    assert not work.is_relative_to(REPO)
    result = installed.run("onnx", "--variant", "l1", "--out", str(work / "out"), "--json", cwd=work,
                           **{PROBE_ENV: str(probe)})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok"
    package = Path(summary["artifact"])
    assert package.is_relative_to(work / "out") and (package / "model.onnx").is_file()
    manifest = json.loads((package / "manifest.json").read_text())
    # the default recipe was found inside the installed package, not in a recipes/ folder of the working directory
    packaged_recipe = installed.site_packages / "efexport" / "recipes" / "onnx.toml"
    assert manifest["recipe"]["file"] == "onnx.toml"
    assert manifest["recipe"]["file_sha256"] == sha256_of(packaged_recipe)
    assert "coremltools" not in manifest["versions"]  # nothing of the extra was there to record

    dumps = [json.loads(p.read_text()) for p in probe.glob("*.json")]
    (main,) = [d for d in dumps if Path(d["argv"][0]).name == "efexport"]
    assert {"efexport.exporter.cli", "efexport.exporter.pipeline", "efexport.exporter.targets.onnx.export",
            "efexport.validate.parity"} <= set(main["modules"])
    site = installed.site_packages.resolve()
    for dump in dumps:
        for name, (file, paths) in dump["modules"].items():
            for where in [file, *paths] if file else paths:
                assert Path(where).resolve().is_relative_to(site / "efexport"), f"{name} ran from {where}"


def test_base_install_refuses_coreml_naming_the_extra(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("coreml", "--variant", "l1", "--out", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert result.returncode not in (0, 1), result.stderr[-3000:]  # 1 would be an internal error (a traceback)
    assert EXTRA_MESSAGE in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = json.loads(result.stdout)
    assert error["status"] == "error" and EXTRA_MESSAGE in error["error"]
    assert error["exit_code"] == result.returncode
    assert not list((tmp_path / "out").rglob("model.mlpackage"))


def test_base_install_refuses_coreai_naming_the_extra_and_coreai_core(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("coreai", "--variant", "l1", "--out", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'efexport[coreai]'" in result.stderr and "coreai-core" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = json.loads(result.stdout)
    assert error["status"] == "error" and "coreai-core (module coreai)" in error["error"]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))
