"""What a deployment target declares about itself, as data the rest of efexport reads.

A TargetSpec is light (no torch, no converter): the command line builds the target's export command from it
(``options``), the recipe model takes its section from it (``recipe_section``), the manifest model its ``target``
block (``facts``, imported by ``facts_model()``), the Makefile's and CI's target lists are generated from the
registry of specs, and ``load()`` imports the implementation (``Target`` in ``efexport.exporter.targets.base``:
export, runners, metadata) only when an export or a verification needs it.

Adding a target: one subpackage ``exporter/targets/<name>/`` (its spec in ``__init__.py``, its implementation,
its manifest facts in ``facts.py``, its ``card.md.j2``), one line in ``efexport.exporter.targets``' registry,
a recipe in ``recipes/``, tests and docs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efexport.exporter.errors import UsageError

if TYPE_CHECKING:
    from pydantic import BaseModel


@dataclass(frozen=True)
class TargetOption:
    """One option of a target's export command that sets a recipe value.

    ``kind`` is str, int or bool; a bool option is a ``--x/--no-x`` pair when ``flag`` holds a slash. With
    ``choices`` the value must be one of them; with ``parse`` the text is turned into the recipe value (raising
    ValueError with the message to show, exit 2).
    """

    flag: str  # "--deployment-target", or "--dynamic-batch/--static-batch" for a bool pair
    recipe_key: str  # dotted recipe key the value overrides, e.g. "coreml.minimum_deployment_target"
    help: str
    kind: type = str
    choices: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    in_all: bool = False  # a switch that `efexport all` offers too, applied to this target only

    @property
    def param(self) -> str:
        """The Python parameter name: ``--deployment-target`` -> ``deployment_target``."""
        return self.flag.split("/")[0].removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class ExitOutcome:
    """A finished export that is not a plain success, e.g. TensorRT's portable half without an engine."""

    status: str  # in --json, instead of "ok"
    exit_code: int
    message: str  # one line for the console


@dataclass(frozen=True)
class PublishAllowance:
    """A publish flag that lets a target's not-deployable package through, e.g. TensorRT's portable half."""

    flag: str  # "--allow-no-engine"
    help: str
    blocks: Callable[[Any], str | None]  # its manifest's target block (the facts model) -> why it is refused
    #                                       without the flag (None: it is not)

    @property
    def param(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class TargetSpec:
    """Everything efexport needs to know about a target without importing it."""

    name: str  # the command, the recipe's `target`, the manifest's target.format, the package folder prefix
    title: str  # for people: "Core ML"
    summary: str  # the export command's help, first paragraph
    writes: str  # what the package holds besides manifest.json, README.md and reference_io.npz
    precisions: tuple[str, ...]  # the values of the precision axis it exports (its recipe picks the default)
    default_recipe: str  # file name under recipes/
    implementation: str  # "module:Class" of its Target implementation
    facts: str  # "module:Class" of its facts in manifest.json (``target``), a manifest_blocks.TargetFacts model
    # "module:function" reading back the facts its package's model carries (``Target.embed_metadata`` wrote them):
    # (package directory, target.model_file) -> [manifest.EmbeddedEntries]; light, runs nothing of the package
    embedded: str
    options: tuple[TargetOption, ...] = ()  # its export command's own options
    recipe_section: type[BaseModel] | None = None  # its [name] table in a recipe, if it has one
    check_recipe: Callable[[Any], None] | None = None  # rules across sections; raise ValueError with the message
    extra: str | None = None  # the pip extra (efexport[extra]) its converter or runtime needs
    # modules that extra provides, checked before an export starts; "module=distribution" where the pip name
    # differs from the import name (coreai=coreai-core), so the message names what to install
    requires: tuple[str, ...] = ()
    traceable: bool = False  # its parity runner can trace every op (--trace)
    outcome: Callable[[Any], ExitOutcome | None] | None = None  # target block (facts model) -> not a plain success
    not_deployable: Callable[[dict], list[str]] | None = None  # target facts -> why the package is not deployable
    publish_allowance: PublishAllowance | None = None  # the flag that publishes it anyway, and when it is needed
    make_ok_exits: tuple[int, ...] = ()  # exit codes `make` accepts from its export (documented outcomes)
    ci_runner: str = "linux"  # which publish-workflow runner builds it: linux, macos or gpu

    def load(self) -> Any:  # an efexport.exporter.targets.base.Target (base sits above this module)
        """The implementation (imports the converter and runtime modules); a missing extra is a UsageError that
        names it."""
        missing = self.missing_requirements()
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise UsageError(f"the {self.name} target needs {', '.join(missing)}, which {verb} not installed: "
                             f"pip install 'efexport[{self.extra}]'")
        module, _, attribute = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attribute)()

    def facts_model(self) -> type[BaseModel]:  # a manifest_blocks.TargetFacts (a leaf this module does not import)
        """The pydantic model of the facts this target writes into the manifest (light: pydantic only)."""
        module, _, attribute = self.facts.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def embedded_entries(self, package: Path, model_file: str) -> list[Any]:
        """efexport's facts as the package's model carries them (``embedded``): a list of
        ``manifest.EmbeddedEntries``, one per place that holds them; OSError or ValueError when they cannot be
        read (a damaged model file)."""
        module, _, attribute = self.embedded.partition(":")
        return getattr(importlib.import_module(module), attribute)(package, model_file)

    def missing_requirements(self) -> list[str]:
        """The modules of its extra that are not installed here."""
        missing = []
        for entry in self.requires:
            module, _, distribution = entry.partition("=")
            if importlib.util.find_spec(module) is None:
                missing.append(f"{distribution} (module {module})" if distribution else module)
        return missing


def fixed_batch(files: str) -> Callable[[Any], None]:
    """A ``check_recipe`` for a target whose model files take a batch of exactly 1 (``files``: "Core ML
    packages"): a recipe asking for a dynamic batch is refused, naming the key."""

    def check(recipe: Any) -> None:
        if recipe.export.dynamic_batch:
            raise ValueError(f"export.dynamic_batch: {files} here have a fixed batch of 1")

    return check
