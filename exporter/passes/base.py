"""What every fold pass is: a named rewrite of an nn.Module that says whether it changed anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn


@dataclass(frozen=True)
class PassResult:
    changed: bool
    rewrites: int = 0  # how many places the pass rewrote


class ModelPass:
    """A rewrite of a model in eval mode that leaves what it computes unchanged (up to float rounding)."""

    name: ClassVar[str]

    def __call__(self, model: nn.Module) -> PassResult:
        raise NotImplementedError
