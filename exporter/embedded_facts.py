"""Manifests that cannot lie about their model: the manifest's facts checked against the ones the model carries.

The package stage writes every fact of the manifest but its file table and timings into the model itself
(``manifest.metadata_entries``, through each target's ``embed_metadata``): ONNX ``metadata_props``, the Core ML
spec's user-defined metadata, the Core AI asset's ``metadata.json``, TensorRT's prepared ONNX and its
``engine.json``. The manifest is in no file table (it holds the table), so an edited manifest.json passes the
file check; here each fact it states (weights and their sha256, source or seed, model family and variant,
precision, preprocessing, target, parity, ...) is compared with what the model carries, and
``package.deployable`` is derived again from the model's own facts (weights, calibration, target).

Each target declares where its package carries the facts (``TargetSpec.embedded``: a light reader of the
model's bytes or JSON, no converter, nothing of the package run). A damaged or stripped model is a problem, not
a crash. What this cannot catch: a package whose model metadata and manifest were both rewritten to agree (the
model's bytes then differ from what its metadata says only in what parity or a signature sees).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from efexport.exporter.manifest import VOLATILE_ENTRIES, EmbeddedEntries, entry_value
from efexport.exporter.manifest_model import Manifest, ManifestFacts, dump_manifest, not_deployable_reasons
from efexport.exporter.targets import TARGETS

PREFIX = "efexport."
# The manifest's top-level facts a model can carry: all but the file table and the timings (VOLATILE_ENTRIES)
FACTS = tuple(field.alias or name for name, field in ManifestFacts.model_fields.items()
              if f"{PREFIX}{field.alias or name}" not in VOLATILE_ENTRIES)
MAX_LISTED = 12  # differences listed per place; the rest are counted
_SHOWN = 120  # characters of a value shown in a problem
_MISSING = object()


def embedded_fact_problems(directory: Path, manifest: Manifest) -> list[str]:
    """Every fact of ``manifest`` (a package's, typed) that differs from what the package's model carries, each
    naming the fact, the manifest's value and the model's; a model that carries none, or cannot be read; and a
    package the manifest calls deployable whose model's facts say it is not. Reads only (no runtime, no
    converter); a model file that is missing or outside the package is left to verify's own checks."""
    directory = Path(directory)
    model_file = manifest.target.model_file
    parts = PurePosixPath(model_file).parts
    if model_file.startswith("/") or "\\" in model_file or ".." in parts or not (directory / model_file).exists():
        return []  # verify reports the path or the missing file
    try:
        sources: list[EmbeddedEntries] = TARGETS[manifest.target.format].embedded_entries(directory, model_file)
        stated = dump_manifest(manifest)
        problems = [problem for source in sources for problem in _source_problems(source, stated)]
        return problems + _deployable_problems(sources, manifest)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not well-formed, or a key given twice
        return [f"embedded facts: cannot read the facts {model_file} carries, so the manifest cannot be checked "
                f"against it: {type(exc).__name__}: {exc}"]


def _source_problems(source: EmbeddedEntries, stated: dict) -> list[str]:
    carried = {key.removeprefix(PREFIX): value for key, value in source.entries.items()
               if key.startswith(PREFIX) and key.removeprefix(PREFIX).split(".")[0] in FACTS}
    if source.complete and not carried:
        return [f"embedded facts: {source.where} carries none of efexport's facts (removed?), so the manifest "
                f"cannot be checked against the model"]
    expected = {key for key in stated if key in FACTS}  # what model_file_entries wrote into the model
    differences = []
    facts = [*carried, *(expected - set(carried) if source.complete else ())]
    for fact in sorted(facts, key=lambda fact: (FACTS.index(fact.split(".")[0]), fact)):  # the manifest's order
        said = _at(stated, fact.split("."))
        if fact in carried and said is not _MISSING and entry_value(said) == carried[fact]:
            continue
        held = _decoded(carried[fact]) if fact in carried else _MISSING
        differences += _differences(fact, said, held)
    lines = [f"manifest vs model: {fact}: manifest.json says {_shown(said)}, {source.where} says {_shown(held)}"
             for fact, said, held in differences[:MAX_LISTED]]
    if len(differences) > MAX_LISTED:
        lines.append(f"manifest vs model: {len(differences) - MAX_LISTED} more facts differ from {source.where}")
    return lines


def _deployable_problems(sources: list[EmbeddedEntries], manifest: Manifest) -> list[str]:
    """package.deployable derived again from the facts the model carries (a complete place), as the package stage
    derived it: a manifest calling deployable what they say is not fails."""
    if not manifest.package.deployable:
        return []
    for source in sources:
        if not source.complete:
            continue
        weights, target = (_decoded(source.entries.get(f"{PREFIX}{key}", "null")) for key in ("weights", "target"))
        quantization = _decoded(source.entries.get(f"{PREFIX}quantization", "null"))
        calibration = quantization.get("calibration") if isinstance(quantization, dict) else None
        if not isinstance(weights, dict) or not isinstance(target, dict) or target.get("format") not in TARGETS:
            continue  # the differences above say what the model carries instead
        try:
            reasons = not_deployable_reasons(weights.get("source") == "random-init",
                                             isinstance(calibration, dict) and calibration.get("synthetic") is True,
                                             target)
        except (AttributeError, TypeError):  # target facts of the wrong shape: the differences above say so
            continue
        if reasons:
            return [f"manifest vs model: package.deployable: manifest.json says true, but the facts {source.where} "
                    f"carries make it not deployable: {'; '.join(reasons)}"]
    return []


def _at(value: object, path: list[str]) -> object:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _decoded(text: str) -> object:
    """A metadata entry's value as the fact it encodes (``entry_value``): JSON, or the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _same(a: object, b: object) -> bool:
    return a is not _MISSING and b is not _MISSING and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _differences(fact: str, said: object, held: object) -> list[tuple[str, object, object]]:
    """(dotted fact, manifest's value, model's value) of each smallest part that differs; lists of scalars (a
    mean, a shape) are one value."""
    if _same(said, held):
        return []
    if isinstance(said, dict) and isinstance(held, dict):
        return [d for key in dict.fromkeys([*said, *held])
                for d in _differences(f"{fact}.{key}", said.get(key, _MISSING), held.get(key, _MISSING))]
    if isinstance(said, list) and isinstance(held, list) and len(said) == len(held) \
            and any(isinstance(item, dict | list) for item in [*said, *held]):
        return [d for i, (a, b) in enumerate(zip(said, held, strict=True)) for d in _differences(f"{fact}[{i}]", a, b)]
    return [(fact, said, held)]


def _shown(value: object) -> str:
    if value is _MISSING:
        return "nothing"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


__all__ = ["embedded_fact_problems"]
