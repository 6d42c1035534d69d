"""How every command reports: progress and errors on stderr, one JSON document on stdout with --json, and the
documented exit code (``efexport.exporter.errors.ExitCode``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from efexport.exporter import interrupts
from efexport.exporter.errors import EfexportError, UsageError

T = TypeVar("T")


def stderr(quiet: bool) -> Console | None:
    return None if quiet else Console(stderr=True)


def fail(exc: EfexportError, as_json: bool) -> typer.Exit:
    """Report ``exc`` (one line naming the stage, and the error document with --json) and return the exit."""
    stage = exc.stage
    where = f"[{stage}] " if stage else ""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(where + str(exc))}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"status": "error", "stage": stage, "error": str(exc), "exit_code": int(exc.exit_code)}))
    return typer.Exit(int(exc.exit_code))


def run_guarded(as_json: bool, work: Callable[[], T]) -> T:
    """Run ``work``; a user-facing error or an interrupt ends the command with its exit code."""
    try:
        return work()
    except EfexportError as exc:
        raise fail(exc, as_json) from None
    except KeyboardInterrupt:
        # a signal can land after the rename: then the artifact is complete and verified, never partial
        Console(stderr=True).print("[bold red]interrupted[/]: unfinished work was removed; no partial artifact is "
                                   "left")
        raise typer.Exit(int(interrupts.exit_code())) from None


def deprecated(old: str, new: str) -> None:
    """One line on stderr: an old spelling still works, and what to write instead."""
    Console(stderr=True).print(f"[yellow]deprecated:[/] {escape(old)}; use {escape(new)}", highlight=False)


def target_names(given: list[str] | None, deprecated_list: str | None, as_json: bool) -> list[str]:
    """The targets of ``--target`` (repeatable), or of the deprecated comma list ``--targets``; all by default.
    Unknown or repeated names are usage errors."""
    from efexport.exporter.targets import TARGETS

    if deprecated_list is not None:
        deprecated(f"--targets {deprecated_list}", "--target NAME, repeated")
        names = [name.strip() for name in deprecated_list.split(",") if name.strip()]
        shown = f"--targets {deprecated_list}"
    else:
        names = list(given) if given else list(TARGETS)
        shown = " ".join(f"--target {name}" for name in names)
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise fail(UsageError(f"{shown}: choose from {', '.join(TARGETS)}"), as_json)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # the second export of a target would only find the first one's package in its way
        raise fail(UsageError(f"{shown}: {', '.join(twice)} given twice"), as_json)
    return names


def json_out(document: Any) -> None:
    print(json.dumps(document, indent=2))
