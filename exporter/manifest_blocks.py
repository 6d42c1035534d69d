"""What every typed block of manifest.json is made of: the block base classes, the shared annotated types, and
the base of a target's facts block.

``exporter/manifest_model.py`` assembles the manifest from these; each target declares the facts it writes
(``target`` in the manifest) in its own subpackage, ``exporter/targets/<name>/facts.py``, from these alone, and
names that model in its TargetSpec (``facts``). The conventions (open and closed blocks, ``T | Absent``, strict
validation, key order) are described in ``exporter/manifest_model.py``.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from efexport.exporter.precisions import PRECISIONS

# From the precision axis.
Precision = Literal[tuple(PRECISIONS)]  # type: ignore[valid-type]
Simplifier = Literal["onnxsim", "onnxslim", "none"]

Absent = SkipJsonSchema[None]  # "may be left out": None in Python, never in the JSON Schema (see Block)

NonEmptyStr = Annotated[str, Field(min_length=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="A SHA-256 digest, 64 lowercase hex digits.")]
RELATIVE_PATH = r"^(?![A-Za-z]:)(?!\.\.?(?:/|$))[^/\\]+(?:/(?!\.\.?(?:/|$))[^/\\]+)*$"
RelativePath = Annotated[str, Field(
    pattern=RELATIVE_PATH,
    description="A relative POSIX path inside the package: no leading '/', no drive letter, no backslash, no "
                "empty, '.' or '..' segment.")]
Count = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# A float64 cosine of nearly equal vectors may round a hair past 1.
Cosine = Annotated[float, Field(ge=-1.000001, le=1.000001)]
OpCounts = dict[str, Count]


def non_finite_paths(value: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Where in ``value`` (any JSON-like data) NaNs and infinities are: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_paths(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from non_finite_paths(item, (*path, index))


class Block(BaseModel):
    """An open block: keys besides the fields are allowed (a newer efexport may add facts) and kept."""

    model_config = ConfigDict(
        extra="allow", strict=True, allow_inf_nan=False,
        regex_engine="python-re",  # the relative-path pattern needs look-ahead, which the default engine lacks
        protected_namespaces=(),  # fields such as model_file are the manifest's names, not pydantic's
    )

    # The order of the keys this block was given: dumps keep it, so a manifest written through the models lists
    # its keys as the stages produced them (fields and extra keys interleaved), as it did before the models.
    _key_order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_key_order(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        block = handler(data)
        if isinstance(data, dict):
            block._key_order = tuple(key for key in data if isinstance(key, str))
        return block

    @model_serializer(mode="wrap")
    def _in_given_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = handler(self)
        first = {key: dumped[key] for key in self._key_order if key in dumped}
        return first | {key: value for key, value in dumped.items() if key not in first}

    @model_validator(mode="after")
    def _absent_is_not_null(self) -> Self:
        """A field typed ``T | Absent`` may be left out, but an explicit None would be written as null, which
        the schema refuses; extra keys may hold anything JSON holds, which excludes NaN and infinities."""
        for name in self.model_fields_set:
            field = type(self).model_fields.get(name)
            if field is not None and getattr(self, name) is None and type(None) not in typing.get_args(
                    field.annotation):
                raise ValueError(f"{name}: leave the key out instead of setting it to null")
        for place in non_finite_paths(self.__pydantic_extra__ or {}):
            raise ValueError(f"{'/'.join(map(str, place))}: NaN and infinities are not JSON")
        return self

    def as_json(self) -> dict[str, Any]:
        """The block as plain JSON types, its keys (fields and extra keys) in the order they were given; for a
        reader that lists every key (a table of tool versions, a device's facts)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Closed(Block):
    """A closed block: a key that is not a field is an error (a misspelt key is caught)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class NotDeployableWhen:
    """A fact of a target's block that makes its package not deployable: the value at ``path`` (keys inside the
    target block) is ``value``. The manifest's schema states it (if the target is of that format and the value is
    there, package.deployable is false) and the manifest model checks it."""

    path: tuple[str, ...]
    value: bool | int | str
    reason: str  # one clause, lowercase: "a TensorRT package without an engine is not deployable"

    def holds(self, block: BaseModel) -> bool:
        """Whether ``block`` (the target's facts) has ``value`` at ``path``."""
        node: object = block
        for key in self.path:
            node = getattr(node, key, None) if isinstance(node, BaseModel) else None
            if node is None:
                return False
        return type(node) is type(self.value) and node == self.value


class TargetFacts(Block):
    """What every target writes (ExportedModel.facts); each target's facts model (``exporter/targets/<name>/
    facts.py``) narrows ``format`` to its name and ``precision`` to what it exports, and adds its own facts. Other
    keys are allowed."""

    format: NonEmptyStr
    model_file: RelativePath
    precision: Precision
    op_counts: OpCounts

    # Facts of this target that make a package not deployable (stated in the schema, checked by the manifest).
    not_deployable_when: ClassVar[tuple[NotDeployableWhen, ...]] = ()

    @classmethod
    def format_name(cls) -> str:
        """The one ``format`` this model describes (its Literal)."""
        (name,) = typing.get_args(cls.model_fields["format"].annotation)
        return name


__all__ = [
    "RELATIVE_PATH", "Absent", "Block", "Closed", "Cosine", "Count", "Fraction", "NonEmptyStr", "NonNegative",
    "NotDeployableWhen", "OpCounts", "Positive", "PositiveInt", "Precision", "RelativePath", "Sha256", "Simplifier",
    "TargetFacts", "non_finite_paths",
]
