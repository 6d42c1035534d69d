"""Options a command takes from the registries: typer reads a command's options from its signature, so a command
whose options depend on the registered targets gets them added to its signature here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer


def switch(name: str, flag: str, help_text: str) -> inspect.Parameter:
    """A keyword-only ``--flag`` switch, off by default."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False,
                             annotation=Annotated[bool, typer.Option(flag, help=help_text)])


def with_options(command: Callable[..., None], added: list[inspect.Parameter]) -> Callable[..., None]:
    """``command`` (which takes ``**kwargs`` for them) with ``added`` as options of its own, after its others."""
    signature = inspect.signature(command, eval_str=True)  # real Annotated objects, as typer reads them
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def wrapper(**given: Any) -> None:
        command(**given)

    parameters = fixed + added
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    wrapper.__doc__, wrapper.__name__ = command.__doc__, command.__name__
    return wrapper
