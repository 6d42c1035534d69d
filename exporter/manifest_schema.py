"""The JSON Schema of ``manifest.json`` (efexport.manifest/3), generated from the typed models, and readable
checks against it.

The models in ``exporter/manifest_model.py`` define the manifest; the schema is generated from them and shipped
as data, ``exporter/data/manifest.schema.json`` (draft 2020-12), so that anyone consuming a package can
validate its manifest without efexport. After changing the models, regenerate it with
``python -m efexport.exporter.manifest_schema --write`` (``--check`` says whether the checked-in file is
current; a test does the same). ``schema_problems`` lists every violation as one line naming where it is
(``files/model.onnx/sha256: ...``); ``check_manifest`` raises ``VerifyError`` with the first few of them.
``typed_manifest`` and ``load_manifest`` give a reader the manifest as the typed ``Manifest`` (checked against
the schema first, so a broken manifest is a ``VerifyError`` naming where it breaks).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import ValidationError as ModelValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from efexport.exporter.errors import VerifyError
from efexport.exporter.manifest import MANIFEST_FILE, MANIFEST_SCHEMA, read_manifest
from efexport.exporter.manifest_model import Manifest, non_finite_paths

SCHEMA_FILE = resources.files("efexport.exporter.data").joinpath("manifest.schema.json")
SCHEMA_ID = "https://efexport.invalid/schemas/efexport.manifest-3.schema.json"
SCHEMA_TITLE = f"efexport package manifest, version 3 ({MANIFEST_SCHEMA})"
ROOT = "(root)"  # how a problem with the manifest as a whole names its place
_SHOWN_PROBLEMS = 5
_MAX_MESSAGE = 300


_SOURCE_FILE = Path(__file__).resolve().parent / "data" / "manifest.schema.json"  # what --write replaces
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_DEF_WORDS = {"CoreML": "Coreml", "TensorRT": "Tensorrt"}  # one word each in a $defs name


def _def_name(class_name: str) -> str:
    """The $defs name of a model: its class name in snake_case (LatencyEntry -> latency_entry), as the schema
    has always named them (other tools refer to #/$defs/latency_entry)."""
    for word, plain in _DEF_WORDS.items():
        class_name = class_name.replace(word, plain)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


def _tidied(node: Any, names: dict[str, str]) -> Any:
    """``node`` with $refs renamed by ``names``, descriptions (docstrings) on one line and first."""
    if isinstance(node, list):
        return [_tidied(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: None for key in ("$comment", "description") if key in node}  # what a reader wants first
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            value = "#/$defs/" + names[value.removeprefix("#/$defs/")]
        elif key == "description" and isinstance(value, str):
            value = " ".join(value.split())
        else:
            value = _tidied(value, names)
        result[key] = value
    return result


class ManifestJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema generation, tuned so that the schema reads like a hand-written one and gives the
    one-line problems ``schema_problems`` reports:

    - no generated titles (the field names say it all) and no defaults (a manifest states every value it has);
    - ``T | None`` as ``"type": [T, "null"]`` where T is a plain type, so a violated constraint is reported as
      itself rather than as "not valid under any of the given schemas";
    - a dict with constrained keys as ``propertyNames`` plus ``additionalProperties`` (pydantic's
      ``patternProperties`` would let any other key through);
    - a tagged union as the tag's enum plus one if/then per tag (rather than oneOf and OpenAPI's
      ``discriminator``), so the problems reported are those of the one branch the value meant;
    - $defs named in snake_case, without titles, descriptions on one line.
    """

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if isinstance(inner.get("type"), str) and not {"$ref", "const", "enum"} & inner.keys():
            return {**inner, "type": [inner["type"], "null"]}  # constraints of one type ignore the other
        return super().nullable_schema(schema)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        result = super().dict_schema(schema)
        patterns = result.pop("patternProperties", None)
        if patterns:
            ((pattern, values),) = patterns.items()
            result["propertyNames"] = {"pattern": pattern, **result.get("propertyNames", {})}
            result["additionalProperties"] = values
        return result

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        tag = schema["discriminator"]
        if not isinstance(tag, str):
            return super().tagged_union_schema(schema)
        values = [value for value in schema["choices"] if isinstance(value, str)]
        return {"type": "object", "required": [tag], "properties": {tag: {"enum": values}},
                "allOf": [{"if": {"properties": {tag: {"const": value}}, "required": [tag]},
                           "then": self.generate_inner(schema["choices"][value])} for value in values]}

    def generate(self, schema: core_schema.CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        defs = generated.pop("$defs", {})
        names = {name: _def_name(name) for name in defs}
        body = _tidied({key: value for key, value in generated.items() if key != "title"}, names)  # title: ours
        body["$defs"] = {names[name]: _tidied({key: value for key, value in definition.items() if key != "title"},
                                              names) for name, definition in sorted(defs.items())}
        return body


def generate_schema() -> dict[str, Any]:
    """The manifest's JSON Schema, generated from ``exporter.manifest_model.Manifest``."""
    body = Manifest.model_json_schema(schema_generator=ManifestJsonSchema)
    return {"$schema": _DRAFT, "$id": SCHEMA_ID, "title": SCHEMA_TITLE, **body}


def schema_text() -> str:
    """What ``exporter/data/manifest.schema.json`` holds: the generated schema, two-space indented."""
    return json.dumps(generate_schema(), indent=2, ensure_ascii=False) + "\n"


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
        # JSON has no NaN or infinity, but Python's json writes them, and no schema keyword refuses them (every
        # comparison with NaN is false): a manifest built in memory is checked for them here
        lines.update((_where(path), "NaN and infinities are not JSON numbers") for path in non_finite_paths(manifest))
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


def typed_or_problems(manifest: object) -> tuple[Manifest | None, list[str]]:
    """``(Manifest, [])`` when ``manifest`` (JSON data) follows efexport.manifest/3, else ``(None, problems)``:
    the schema's problems (``schema_problems``), or the models' where they are stricter. Never raises on JSON
    data: for a reader that reports what is wrong with a manifest (verify)."""
    if isinstance(manifest, Manifest):
        return manifest, []
    problems = schema_problems(manifest)
    if problems:
        return None, problems
    try:
        return Manifest.model_validate(manifest), []
    except ModelValidationError as exc:
        return None, [f"{_where(error['loc']) if error['loc'] else ROOT}: {_shorten(error['msg'])}"
                      for error in exc.errors(include_url=False)]


def typed_manifest(manifest: object, where: str) -> Manifest:
    """``manifest`` (JSON data, e.g. ``read_manifest``'s) as the typed ``Manifest``; VerifyError naming ``where``
    when it does not follow efexport.manifest/3."""
    typed, problems = typed_or_problems(manifest)
    if typed is None:
        raise VerifyError(f"{where}: manifest does not follow {MANIFEST_SCHEMA}: " + format_problems(problems))
    return typed


def load_manifest(directory: Path) -> Manifest:
    """The manifest.json of a package directory, read (``read_manifest``) and typed (``typed_manifest``)."""
    return typed_manifest(read_manifest(directory), str(Path(directory) / MANIFEST_FILE))


__all__ = ["SCHEMA_FILE", "SCHEMA_ID", "ManifestJsonSchema", "check_manifest", "format_problems", "generate_schema",
           "load_manifest", "manifest_schema", "schema_problems", "schema_text", "typed_manifest", "typed_or_problems"]


def main(argv: Sequence[str] | None = None, schema_file: Path = _SOURCE_FILE) -> int:
    """``--write`` regenerates ``schema_file`` (exporter/data/manifest.schema.json) from the models; ``--check``
    exits 1 when it differs from what they generate."""
    parser = argparse.ArgumentParser(prog="python -m efexport.exporter.manifest_schema",
                                     description="The manifest's JSON Schema, generated from its typed models.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {schema_file}")
    action.add_argument("--check", action="store_true", help="exit 1 unless the checked-in schema is current")
    args = parser.parse_args(argv)
    text = schema_text()
    if args.write:
        schema_file.write_text(text, encoding="utf-8")
        print(f"wrote {schema_file}")
        return 0
    current = schema_file.read_text(encoding="utf-8") if schema_file.is_file() else None
    if current != text:
        print(f"{schema_file} is not what exporter/manifest_model.py generates: run "
              "python -m efexport.exporter.manifest_schema --write", file=sys.stderr)
        return 1
    print(f"{schema_file} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
