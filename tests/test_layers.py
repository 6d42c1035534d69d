"""The layers point one way (ARCHITECTURE.md): no import cycle between efexport's modules, function-local imports
included, and no import that climbs above its layer. Read from the source with ast, so nothing is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "validate", "recipes", "benchmarks")  # folders; installed as efexport.<folder>

# (importer prefix, forbidden imported prefix): validate holds the checks, below everything that runs the pipeline
FORBIDDEN = [("validate", f"exporter.{above}") for above in (
    "pipeline", "stages", "targets", "cli", "publish", "pull", "bench", "verify", "bundle", "model_card", "signing",
    "provenance")]
# signing sits under bundle: bundles carry the signature, and the signature reads bundles without extracting them
FORBIDDEN += [("exporter.signing", f"exporter.{above}") for above in ("bundle", "verify", "publish", "pull",
                                                                       "provenance", "pipeline", "cli")]
FORBIDDEN += [(package, "benchmarks") for package in ("exporter", "validate", "recipes")]  # not installed
FORBIDDEN += [("exporter.models", f"exporter.{above}") for above in ("stages", "targets", "pipeline", "cli")]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (function bodies and TYPE_CHECKING included)."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            target = target.removeprefix("efexport.")
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_reader_sees_the_imports() -> None:
    edges = graph()
    assert "exporter.pipeline" in edges["exporter.cli.export"]  # a function-local import counts
    assert "validate.parity" in edges["exporter.pipeline"]
    assert len(edges) > 60


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=[f"{s}->{t}" for s, t in FORBIDDEN])
def test_no_import_climbs_above_its_layer(source: str, target: str) -> None:
    bad = sorted(f"{name} imports {dep}" for name, deps in graph().items() if name.startswith(source)
                 for dep in deps if dep == target or dep.startswith(target + "."))
    assert bad == []


def test_the_registries_and_the_command_line_import_no_torch() -> None:
    """Flags, recipes, --help and the target/family lists answer without importing torch (seconds saved)."""
    code = ("import sys; import efexport.exporter.cli, efexport.exporter.recipes; "
            "print(sorted(m for m in ('torch', 'coremltools', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
