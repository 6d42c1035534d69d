"""The JSON Schema of ``manifest.json`` (efexport.manifest/3) and readable checks against it.

The schema itself is data, shipped as ``exporter/data/manifest.schema.json`` (draft 2020-12), so that anyone
consuming a package can validate its manifest without efexport. ``schema_problems`` lists every violation as
one line naming where it is (``files/model.onnx/sha256: ...``); ``check_manifest`` raises ``VerifyError`` with
the first few of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import MANIFEST_SCHEMA

SCHEMA_FILE = resources.files("efexport.exporter.data").joinpath("manifest.schema.json")
SCHEMA_ID = "https://efexport.invalid/schemas/efexport.manifest-3.schema.json"
ROOT = "(root)"  # how a problem with the manifest as a whole names its place
_SHOWN_PROBLEMS = 5
_MAX_MESSAGE = 300


@cache
def manifest_schema() -> dict[str, Any]:
    """The schema document (read once; treat it as read-only)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@cache
def _validator() -> Draft202012Validator:
    schema = manifest_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)  # no format_checker: "format" is annotation only


def _where(path: Iterable[Any]) -> str:
    parts = [str(part) if str(part).isprintable() else repr(str(part)) for part in path]  # a key may hold "\n"
    return "/".join(parts) if parts else ROOT


def _shorten(message: str) -> str:
    if len(message) <= _MAX_MESSAGE:
        return message
    return message[:200] + " ... " + message[-(_MAX_MESSAGE - 205):]


def _discriminated(error: ValidationError) -> list[ValidationError] | None:
    """For a failed oneOf/anyOf whose branches are told apart by a constant (``source: "checkpoint"``), the
    errors of the one branch the instance meant; None when that cannot be told."""
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    if not branches:
        return None

    def rules_out(sub: ValidationError) -> bool:  # the branch is for another kind of value
        return (sub.validator == "const" and len(sub.relative_path) == 1) or (
            sub.validator == "type" and not sub.relative_path)

    meant = [errors for errors in branches.values() if not any(rules_out(sub) for sub in errors)]
    return meant[0] if len(meant) == 1 else None


def _lines(error: ValidationError) -> list[tuple[str, str]]:
    """(path, message) pairs for one error, expanded where jsonschema's own message would name the wrong place."""
    path = list(error.absolute_path)
    if error.validator in ("oneOf", "anyOf"):
        chosen = _discriminated(error)
        if chosen is not None:
            return [line for sub in chosen for line in _lines(sub)]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        return [(_where([*path, key]), "required key is missing") for key in missing]
    if error.validator == "additionalProperties" and error.validator_value is False \
            and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        extra = [key for key in error.instance
                 if key not in known and not any(re.search(pattern, key) for pattern in patterns)]
        return [(_where([*path, key]), "unknown key (not allowed here)") for key in extra]
    if "propertyNames" in error.absolute_schema_path:
        return [(_where([*path, error.instance]), f"key {_shorten(error.message)}")]
    return [(_where(path), _shorten(error.message))]


def schema_problems(manifest: object) -> list[str]:
    """Every way ``manifest`` (any JSON value) breaks efexport.manifest/3, one line each, sorted by path;
    empty when it follows the schema. Never raises on JSON data."""
    lines: set[tuple[str, str]] = set()
    try:
        for error in _validator().iter_errors(manifest):
            lines.update(_lines(error))
    except RecursionError:
        lines.add((ROOT, "nested too deeply to check"))
    return [f"{where}: {message}" for where, message in sorted(lines)]


def format_problems(problems: Sequence[str], shown: int = _SHOWN_PROBLEMS) -> str:
    """The first ``shown`` problems joined by "; ", with how many more there are."""
    text = "; ".join(problems[:shown])
    if len(problems) > shown:
        text += f" (and {len(problems) - shown} more)"
    return text


def check_manifest(manifest: object, where: str) -> None:
    """Raise VerifyError naming ``where`` (a path, or what is being checked) unless ``manifest`` follows
    efexport.manifest/3."""
    problems = schema_problems(manifest)
    if problems:
        raise VerifyError(f"{where}: manifest does not follow {MANIFEST_SCHEMA}: " + format_problems(problems))


__all__ = ["SCHEMA_FILE", "SCHEMA_ID", "check_manifest", "format_problems", "manifest_schema", "schema_problems"]
