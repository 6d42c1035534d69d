"""manifest.json (efexport.manifest/3) as typed models: the one definition of its shape.

``exporter/data/manifest.schema.json`` is generated from these models (``python -m
efexport.exporter.manifest_schema --write``; a test checks the checked-in file is what they generate), and
``exporter.stages.package.build_manifest`` writes a manifest by constructing them and dumping the result with
``dump_manifest``. Readers (the model card, publish, bundle, bench, the CLI, verify) validate the written JSON
into ``Manifest`` once (``exporter.manifest_schema.load_manifest``/``typed_manifest``) and read attributes.

The blocks' base classes and shared types are in ``exporter/manifest_blocks.py``. The ``target`` block is each
target's own: its facts model lives in its subpackage (``exporter/targets/<name>/facts.py``), named by its
TargetSpec's ``facts``; the union below is built from the target registry, and the facts a target declares make a
package not deployable (``TargetFacts.not_deployable_when``, e.g. TensorRT without an engine) become rules here.
A new target adds nothing to this module.

Conventions, so that the models and the JSON Schema mean the same thing:

- Blocks are open (other keys allowed, kept when dumped, read through ``model_extra``) unless they derive from
  ``_Closed`` (``manifest_blocks.Closed``), whose schema says ``additionalProperties: false``: the top level,
  and the blocks where a closed shape catches mistakes.
- A field typed ``T | Absent`` (default None) may be left out but is never null; a field typed ``T | None``
  without a default must be present and may be null (with default None: may be left out, or null). Dumps use
  ``exclude_unset``, so what was left out stays out, and keep the keys in the order they were given.
- Validation is strict (no coercion: ``"1"`` is not an int, ``true`` not a number); arrays may be given as
  tuples (what the stages' dataclasses hold) and are dumped as JSON arrays; NaN and infinities are refused.
- Rules across fields (deployable and its reasons, the package name against variant, format and precision, ...)
  are checked by ``model_validator``\\ s and stated in the schema by ``json_schema_extra`` (if/then), so a
  consumer without efexport checks them too; tests hold the two to the same verdicts. (The models are stricter
  in one respect: JSON Schema counts 2.0 as an integer, strict validation does not. The code writes ints.)
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, TypeAdapter, model_validator

from efexport.exporter.manifest_blocks import (
    Absent,
    Cosine,
    Count,
    Fraction,
    NonEmptyStr,
    NonNegative,
    OpCounts,
    Positive,
    PositiveInt,
    Precision,
    RelativePath,
    Sha256,
    TargetFacts,
    non_finite_paths,
)
from efexport.exporter.manifest_blocks import Block as _Block
from efexport.exporter.manifest_blocks import Closed as _Closed
from efexport.exporter.models import FAMILIES, family_of
from efexport.exporter.targets import TARGETS

# The values of these Literals are the manifest's and the latency report's schema ids
# (exporter.manifest.MANIFEST_SCHEMA, validate.latency.LATENCY_SCHEMA); a test checks they agree.
ManifestSchemaId = Literal["efexport.manifest/3"]
LatencySchemaId = Literal["efexport.latency/2"]

# From the registries: a new family, target or precision changes the generated schema (and the test that keeps
# the checked-in schema current says so).
Variant = Literal[tuple(v for entry in FAMILIES for v in entry.variants)]  # type: ignore[valid-type]
FamilyName = Literal[tuple(dict.fromkeys(entry.display_name for entry in FAMILIES))]  # type: ignore[valid-type]
FamilyVersion = Literal[tuple(dict.fromkeys(entry.version for entry in FAMILIES))]  # type: ignore[valid-type]
Format = Literal[tuple(TARGETS)]  # type: ignore[valid-type]


# --- what the package is -------------------------------------------------------------------------------------

def _literal(value: str) -> str:
    """``value`` as a pattern matching itself: registry names are lowercase letters, digits and inner dashes,
    which need no escaping in any regex dialect (an escaped dash is invalid in ECMA-262 unicode patterns)."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", value):
        raise ValueError(f"{value!r}: registry names are lowercase letters, digits and inner dashes")
    return value


def _alternatives(values: tuple[str, ...]) -> str:
    return "(" + "|".join(_literal(v) for v in values) + ")"


PACKAGE_NAME = (f"^{_alternatives(tuple(e.package_name(v) for e in FAMILIES for v in e.variants))}-"
                f"{_alternatives(typing.get_args(Format))}-{_alternatives(typing.get_args(Precision))}$")


class PackageIdentity(_Closed):
    """exporter.stages.package.package_identity: the name, and whether the package may be deployed (the reasons
    say why not)."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"deployable": {"const": True}}, "required": ["deployable"]},
        "then": {"properties": {"not_deployable_because": {"maxItems": 0}}},
        "else": {"properties": {"not_deployable_because": {"minItems": 1}}},
    })

    name: Annotated[str, Field(pattern=PACKAGE_NAME)]
    deployable: bool
    not_deployable_because: Sequence[NonEmptyStr]

    @model_validator(mode="after")
    def _reasons_agree(self) -> Self:
        if self.deployable == bool(self.not_deployable_because):
            raise ValueError("deployable must be true exactly when not_deployable_because is empty")
        return self


def not_deployable_reasons(random_init: bool, synthetic_calibration: bool, target_facts: dict) -> list[str]:
    """Why a package whose weights, calibration and target facts are these may not be deployed (none: it may).
    ``stages.package.package_identity`` derives package.deployable from it, and verify derives it again from the
    facts the package's model carries (``exporter.embedded_facts``)."""
    reasons = []
    if random_init:
        reasons.append("random-init weights: the model computes nothing meaningful")
    if synthetic_calibration:
        reasons.append("calibrated on synthetic inputs (no --calibration data): its activation ranges are not "
                       "those of real images")
    spec = TARGETS[target_facts["format"]]
    if spec.not_deployable:
        reasons += spec.not_deployable(target_facts)
    return reasons


class PublishedLatency(_Closed):
    """The paper's latency figure and where it was measured."""

    device: NonEmptyStr
    runtime: NonEmptyStr
    value: Positive


class PublishedFigures(_Closed):
    """The paper's figures for the variant (the model family's ``published``): published, never measured by
    efexport."""

    status: Literal["published, not measured here"]
    source: NonEmptyStr
    params_m: Positive
    gmacs: Positive
    imagenet_top1_percent: Annotated[float, Field(ge=0, le=100)]
    latency_ms: PublishedLatency


class ModelFacts(_Block):
    """What the model is: family, variant, its size, and the paper's figures."""

    family: FamilyName
    version: FamilyVersion
    variant: Variant
    parameters: PositiveInt = Field(description="Parameters counted in the loaded model.")
    num_classes: PositiveInt
    class_labels: str
    published: PublishedFigures


class RandomInitWeights(_Closed):
    """Random-init weights, with the seed that reproduces them."""

    source: Literal["random-init"]
    seed: int


class CheckpointWeights(_Closed):
    """The checkpoint read (exporter.models.checkpoint.Checkpoint.describe)."""

    source: Literal["checkpoint"]
    file: NonEmptyStr = Field(description="The checkpoint's file name (no directory).")
    sha256: Sha256
    format: Literal["pth", "safetensors"]
    layout: Literal["upstream", "timm"]


Weights = Annotated[RandomInitWeights | CheckpointWeights, Field(discriminator="source")]


class PreprocessingFacts(_Block):
    """exporter.preprocessing.Preprocessing.describe: how to turn an image into the model's input."""

    mean: Annotated[Sequence[float], Field(min_length=3, max_length=3)]
    std: Annotated[Sequence[Positive], Field(min_length=3, max_length=3)]
    interpolation: NonEmptyStr
    crop_pct: Annotated[float, Field(gt=0, le=1)]
    input_size: PositiveInt
    color_order: Literal["RGB", "BGR"]
    layout: Literal["NCHW", "NHWC"]
    value_range: str
    resize_shorter_side: PositiveInt
    center_crop: PositiveInt


class TensorSpec(_Block):
    """exporter.stages.capture.TensorSpec.describe: one input or output of the captured graph; a string
    dimension is a named dynamic axis."""

    name: NonEmptyStr
    shape: Annotated[Sequence[PositiveInt | NonEmptyStr], Field(min_length=1)]
    dtype: NonEmptyStr


TensorSpecs = Annotated[Sequence[TensorSpec], Field(min_length=1)]


# --- the export target ---------------------------------------------------------------------------------------

def _target_facts() -> dict[str, type[TargetFacts]]:
    """Each registered target's facts model (its spec's ``facts``, in its own subpackage), by format."""
    models = {}
    for name, spec in TARGETS.items():
        model = spec.facts_model()
        if not (isinstance(model, type) and issubclass(model, TargetFacts)) or model.format_name() != name:
            raise TypeError(f"target {name}: its facts {spec.facts} must be a manifest_blocks.TargetFacts whose "
                            f"format is Literal[{name!r}]")
        models[name] = model
    return models


TARGET_FACTS: dict[str, type[TargetFacts]] = _target_facts()

# The target block: the facts model its format names. Built from the registry, so a type checker sees the common
# TargetFacts; a reader wanting a target's own facts narrows with isinstance (or reads them in its target's code).
Target = Annotated[typing.Union[tuple(TARGET_FACTS.values())], Field(discriminator="format")]  # type: ignore[valid-type]  # noqa: UP007


# --- what was checked and measured ---------------------------------------------------------------------------

class FoldPass(_Block):
    """One fold pass: what it rewrote and the error it added."""

    name: NonEmptyStr
    changed: bool
    rewrites: Count
    stored_values_before: Count
    stored_values_after: Count
    ops_before: Count
    ops_after: Count
    max_abs_error: NonNegative


class FoldReport(_Block):
    """exporter.stages.fold.FoldedModel.report plus the recipe's fold.max_abs."""

    passes: Sequence[FoldPass]
    float32_noise_floor: NonNegative
    max_abs_gate: NonNegative
    op_counts_before: OpCounts
    op_counts_after: OpCounts
    max_abs_allowed: Positive


class Tolerances(_Block):
    """exporter.recipes.Tolerances: the gate the parity report was checked against."""

    max_abs: Positive | None = Field(description="null: reported, not gated (FP16).")
    min_cosine: Annotated[float, Field(gt=0, le=1)]
    top1_agreement: bool
    min_top1_agreement: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Smallest fraction of inputs whose top-1 agrees (integer precisions).")


class InputParity(_Block):
    """validate.parity.InputParity: the metrics of one reference input."""

    index: Count
    kind: Literal["noise", "image"]
    max_abs: NonNegative
    mean_abs: NonNegative
    max_rel: NonNegative
    cosine: Cosine
    top1_agree: bool
    top1_tie: bool
    top5_overlap: Annotated[int, Field(ge=0, le=5)]


class ParityReport(_Block):
    """validate.parity.ParityReport.to_dict."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"passed": {"const": True}}, "required": ["passed"]},
        "then": {"properties": {"failures": {"maxItems": 0}}},
        "else": {"properties": {"failures": {"minItems": 1}}},
    })

    passed: bool
    failures: Sequence[str]
    tolerances: Tolerances
    max_abs: NonNegative
    mean_abs: NonNegative
    max_rel: NonNegative
    min_cosine: Cosine
    top1_agreement: Fraction = Field(description="Fraction of inputs whose top-1 class agrees.")
    top1_ties: Count
    mean_top5_overlap: Annotated[float, Field(ge=0, le=5)]
    per_input: Annotated[Sequence[InputParity], Field(min_length=1)]

    @model_validator(mode="after")
    def _passed_without_failures(self) -> Self:
        if self.passed == bool(self.failures):
            raise ValueError("passed must be true exactly when failures is empty")
        return self


class ParityRuntime(_Block):
    """What ran the exported model for the parity gate: the runner's name and the runtime's version."""

    backend: NonEmptyStr
    version: NonEmptyStr


class ParityGate(ParityReport):
    """The parity gate of the export (the target's own runner against the unfolded PyTorch model), with the file
    holding its inputs and outputs, and the runtime that ran it."""

    reference_file: RelativePath
    compared_against: NonEmptyStr
    runtime: ParityRuntime | Absent = None  # written since efexport 0.1.0's Core AI target; absent before


class LatencyStats(_Closed):
    """validate.latency.LatencyStats, milliseconds."""

    p50: NonNegative
    p90: NonNegative
    p99: NonNegative
    mean: NonNegative
    min: NonNegative
    max: NonNegative
    std: NonNegative


class LatencyMethod(_Block):
    """How it was timed: validate.latency.Measurement.method (windows until the last medians agree), or the GPU
    timer's single run."""

    rule: NonEmptyStr
    windows: PositiveInt
    converged: bool | None
    window_p50_ms: Sequence[NonNegative] | Absent = None
    interleaved_with: Sequence[str] | Absent = None


class LatencyDevice(_Block):
    """Where it ran: validate.latency.host_fingerprint (kind cpu) or validate.gpu_timing.gpu_fingerprint (kind
    gpu)."""

    kind: NonEmptyStr


class LatencyEntry(_Block):
    """validate.latency.LatencyReport.to_dict (schema efexport.latency/2)."""

    backend: NonEmptyStr
    runtime_version: str
    measured: Literal["host_end_to_end", "device_compute"]
    precision: Precision
    batch_size: PositiveInt
    threads: PositiveInt | None = Field(
        description="Intra-op threads; null where the runtime schedules its own (Core ML, a GPU).")
    warmup_runs: Count
    timed_runs: PositiveInt = Field(description="Samples behind stats_ms (the settled windows).")
    stats_ms: LatencyStats
    method: LatencyMethod
    noise: NonNegative | None = Field(
        description="Relative spread ((max - min) / median) of the settled windows' medians; null for a single "
                    "window (GPU timing).")
    device: LatencyDevice
    compute_units: str | None = Field(
        description="Core ML's MLComputeUnits setting of the run; null for other runtimes.")
    schema_id: LatencySchemaId = Field(alias="schema")
    images_per_second: Positive


class Fp16Activation(_Block):
    """One of the activations closest to float16's largest value."""

    var: str
    op: str
    max_abs: float
    fraction_of_limit: float


class ReferenceExecution(_Block):
    """Core ML: the reference interpreter's run (exporter.targets.coreml.convert.MilInterpreterRunner.report): FP16
    headroom."""

    interpreter: NonEmptyStr
    ops_executed: Count
    fp16_limit: Positive
    fp16_largest_activations: Sequence[Fp16Activation]
    fp16_overflow: bool


class QuantizationCandidate(_Block):
    """exporter.stages.quantize.Candidate: one point of the error/speed trade-off, on the selection inputs."""

    float_groups: Sequence[NonEmptyStr]
    min_cosine: float
    top1_agreement: Fraction
    passed: bool
    speedup: Positive | None = Field(description="The float model's median batch-1 call time over this one's, "
                                                 "interleaved in one process.")


class SensitivityRow(_Block):
    """exporter.stages.quantize.SensitivityRow: one node group quantized alone, everything else float."""

    group: NonEmptyStr
    nodes: PositiveInt
    min_cosine: float
    top1_agreement: Fraction


class CalibrationFacts(_Block):
    """exporter.calibration.CalibrationSet.describe: where the calibration inputs came from and how they were
    split (calibration / selection / gate, disjoint)."""

    source: Literal["images", "array", "synthetic"]
    description: NonEmptyStr
    sha256: Sha256
    calibration_inputs: PositiveInt
    selection_inputs: PositiveInt
    gate_inputs: PositiveInt
    synthetic: bool


class QuantizationSelection(_Block):
    """The chosen candidate on the selection inputs, and the cosine it had to reach there."""

    min_cosine: float
    min_cosine_required: float
    top1_agreement: Fraction
    speedup: Positive | None = Field(description="Against the float model, interleaved; null on a reference "
                                                 "execution (an interpreter), whose speed is not a device's.")
    inputs: PositiveInt


class QuantizationFacts(_Block):
    """exporter.stages.quantize.QuantizationResult: how an integer model was calibrated, which node groups stayed
    in float and why (the per-group sensitivity), and the error/speed trade-off of every candidate tried."""

    quantizer: dict[str, str]
    calibration: CalibrationFacts
    groups: PositiveInt
    keep_float: Sequence[NonEmptyStr]
    float_groups: Sequence[NonEmptyStr]
    selection: QuantizationSelection
    sensitivity: Sequence[SensitivityRow]
    tradeoff: Sequence[QuantizationCandidate]


class CaptureFacts(_Block):
    """How the model's graph was captured for export: the capture method and the PyTorch that ran it. Further
    keys hold strings."""

    __pydantic_extra__: dict[str, str]  # typed extras: validated as strings, and so stated in the schema

    method: Literal["torch.export", "torch.jit.trace"]
    torch_version: NonEmptyStr


# --- where it came from --------------------------------------------------------------------------------------

GIT_COMMIT = r"^[0-9a-f]{40}([0-9a-f]{24})?(-dirty)?$"


class ToolVersions(_Block):
    """exporter.manifest.tool_versions: efexport, its git commit (null outside a git checkout; -dirty when the
    checkout had local changes), Python and the tracked packages present."""

    __pydantic_extra__: dict[str, NonEmptyStr]  # each tracked package's version

    efexport: NonEmptyStr
    efexport_git_commit: Annotated[str, Field(pattern=GIT_COMMIT)] | None
    python: NonEmptyStr


class RecipeValues(_Block):
    """The recipe's values as used (exporter.recipes.Recipe, flags applied)."""

    target: Format
    precision: Precision


class RecipeFacts(_Block):
    """exporter.stages.package.recipe_facts: the recipe as used, and the file it came from (name and sha256, null
    when it was not a file)."""

    file: str
    file_sha256: Sha256 | None
    values: RecipeValues


class FileEntry(_Closed):
    """sha256 and size of one file."""

    sha256: Sha256
    bytes: Count


# --- the manifest --------------------------------------------------------------------------------------------

def _when(path: tuple[str, ...], value: object) -> dict[str, Any]:
    """JSON Schema condition: the value at ``path`` (object keys from the top) is present and equals ``value``."""
    condition: dict[str, Any] = {"const": value}
    for key in reversed(path):
        condition = {"properties": {key: condition}, "required": [key]}
    return condition


def _all(*conditions: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema condition: every one of ``conditions`` (made by ``_when``) holds, as one nested condition."""
    merged: dict[str, Any] = {}
    for condition in conditions:
        _merge(merged, condition)
    return merged


def _merge(into: dict[str, Any], condition: dict[str, Any]) -> None:
    for key, value in condition.items():
        if key == "required":
            into.setdefault(key, [])
            into[key] += [name for name in value if name not in into[key]]
        elif key == "properties":
            for name, sub in value.items():
                _merge(into.setdefault(key, {}).setdefault(name, {}), sub)
        else:
            into[key] = value


def _then(*rules: tuple[tuple[str, ...], dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema consequence: each ``(path, schema)`` applies ``schema`` to the value at ``path`` (if present)."""
    result: dict[str, Any] = {}
    for path, schema in rules:
        node = result
        for key in path[:-1]:
            node = node.setdefault("properties", {}).setdefault(key, {})
        node.setdefault("properties", {})[path[-1]] = schema
    return result


_NAME, _DEPLOYABLE = ("package", "name"), ("package", "deployable")
_MANIFEST_RULES: list[dict[str, Any]] = [
    {"$comment": "Nothing timed: the manifest must say why.",
     "if": {"properties": {"latency": {"type": "array", "maxItems": 0}}, "required": ["latency"]},
     "then": {"required": ["latency_note"]}},
    {"$comment": "A model calibrated on synthetic inputs is never deployable (stages.package.package_identity).",
     "if": _when(("quantization", "calibration", "synthetic"), True), "then": _then((_DEPLOYABLE, {"const": False}))},
    {"$comment": "Random-init weights are never deployable (exporter.stages.package.package_identity).",
     "if": _when(("weights", "source"), "random-init"), "then": _then((_DEPLOYABLE, {"const": False}))},
    *({"$comment": f"{rule.reason[0].upper()}{rule.reason[1:]}.",
       "if": _all(_when(("target", "format"), fmt), _when(("target", *rule.path), rule.value)),
       "then": _then((_DEPLOYABLE, {"const": False}))}
      for fmt, model in TARGET_FACTS.items() for rule in model.not_deployable_when),
    *({"$comment": f"package.name is <family>-<model.variant>-<target.format>-<target.precision>, and the family "
                   f"is the variant's: {v}.",
       "if": _when(("model", "variant"), v),
       "then": _then((_NAME, {"pattern": f"^{_literal(family_of(v).package_name(v))}-"}),
                     (("model", "family"), {"const": family_of(v).display_name}),
                     (("model", "version"), {"const": family_of(v).version}))}
      for v in typing.get_args(Variant)),
    *({"$comment": f"The package name, the recipe and the target agree on the format: {f}.",
       "if": _when(("target", "format"), f),
       "then": _then((_NAME, {"pattern": f"-{f}-[a-z0-9]+$"}), (("recipe", "values", "target"), {"const": f}))}
      for f in typing.get_args(Format)),
    *({"$comment": f"The package name, the recipe and the target agree on the precision: {p}.",
       "if": _when(("target", "precision"), p),
       "then": _then((_NAME, {"pattern": f"-{p}$"}), (("recipe", "values", "precision"), {"const": p}))}
      for p in typing.get_args(Precision)),
]


class ManifestFacts(_Closed):
    """Every fact of a package but its file table: what ``build_manifest`` makes (plus the keys the pipeline
    adds), before the files are final."""

    schema_id: ManifestSchemaId = Field(alias="schema")
    package: PackageIdentity
    model: ModelFacts
    weights: Weights = Field(description=(
        "exporter.stages.load.LoadedModel.weights: random-init with its seed, or the checkpoint read "
        "(exporter.models.checkpoint.Checkpoint.describe)."))
    preprocessing: PreprocessingFacts
    inputs: TensorSpecs = Field(description="The captured graph's inputs (exporter.stages.capture.TensorSpec).")
    outputs: TensorSpecs = Field(description="The captured graph's outputs (exporter.stages.capture.TensorSpec).")
    target: Target = Field(description=(
        "The export target's facts (ExportedModel.facts): common keys, then per format. Other keys are allowed."))
    fold: FoldReport
    parity: ParityGate
    latency: Sequence[LatencyEntry] = Field(description=(
        "One entry per measurement (validate.latency.LatencyReport.to_dict); empty when nothing could be timed "
        "on the export host, and then latency_note says why."))
    latency_note: NonEmptyStr | Absent = Field(
        default=None, description="Why latency is empty (the target's latency_unavailable text).")
    runtime_parity: Annotated[dict[str, ParityReport], Field(min_length=1)] | Absent = Field(
        default=None, description=(
            "Parity of real runtimes besides the gate's runner (Core ML on macOS, a built TensorRT engine), by "
            "backend name."))
    reference_execution: ReferenceExecution | Absent = None
    quantization: QuantizationFacts | Absent = Field(default=None, description=(
        "Integer precisions: calibration, what stayed in float, sensitivity and the error/speed trade-off."))
    capture: CaptureFacts | Absent = None
    versions: ToolVersions
    recipe: RecipeFacts

    @model_validator(mode="after")
    def _facts_agree(self) -> Self:
        """The rules across blocks that _MANIFEST_RULES states in the schema (except latency_note: the pipeline
        adds it after build_manifest, so Manifest checks it)."""
        problems = []
        if self.package.deployable and isinstance(self.weights, RandomInitWeights):
            problems.append("random-init weights are never deployable")
        if self.package.deployable and self.quantization and self.quantization.calibration.synthetic:
            problems.append("a model calibrated on synthetic inputs is never deployable")
        if self.package.deployable:
            problems += [rule.reason for rule in self.target.not_deployable_when if rule.holds(self.target)]
        family = family_of(self.model.variant)
        if (self.model.family, self.model.version) != (family.display_name, family.version):
            problems.append(f"model {self.model.family} {self.model.version} is not the family of variant "
                            f"{self.model.variant} ({family.display_name} {family.version})")
        name = f"{family.package_name(self.model.variant)}-{self.target.format}-{self.target.precision}"
        if self.package.name != name:
            problems.append(f"package.name {self.package.name!r} is not {name!r} (variant, format, precision)")
        values = self.recipe.values
        if (values.target, values.precision) != (self.target.format, self.target.precision):
            problems.append(f"the recipe ({values.target}, {values.precision}) and the target "
                            f"({self.target.format}, {self.target.precision}) disagree")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Manifest(ManifestFacts):
    """manifest.json of a package written by efexport (one per target: ONNX, Core ML, TensorRT, Core AI): what
    the model is, which weights it holds, how to feed it, what the export target made, the fold report, the
    parity gate and latency measured in the run that made it, tool versions, the recipe, and the sha256 and size
    of every other file in the package directory. Generated from exporter/manifest_model.py (python -m
    efexport.exporter.manifest_schema --write); written by exporter/stages/package.py (build_manifest) and
    exporter/pipeline.py; checked by exporter/manifest_schema.py. Top-level keys are closed (a misspelt key is an
    error); most nested blocks require what the code writes and allow additions, except where a closed shape
    catches mistakes (package, weights, published figures, latency statistics, file entries)."""

    model_config = ConfigDict(json_schema_extra={"allOf": _MANIFEST_RULES})

    files: Annotated[dict[RelativePath, FileEntry], Field(min_length=1)] = Field(description=(
        "exporter.manifest.file_table: sha256 and size of every file in the package directory except "
        "manifest.json, by relative POSIX path."))

    @model_validator(mode="after")
    def _empty_latency_is_explained(self) -> Self:
        if not self.latency and self.latency_note is None:
            raise ValueError("latency is empty: latency_note must say why")
        return self


_WEIGHTS: TypeAdapter[RandomInitWeights | CheckpointWeights] = TypeAdapter(Weights)
_TARGET: TypeAdapter[TargetFacts] = TypeAdapter(Target)


def weights_block(facts: dict[str, Any]) -> RandomInitWeights | CheckpointWeights:
    """LoadedModel.weights as its typed block (the kind its ``source`` says)."""
    return _WEIGHTS.validate_python(facts)


def target_block(facts: dict[str, Any]) -> TargetFacts:
    """ExportedModel.facts as the typed block of its ``format`` (its target's facts model)."""
    return _TARGET.validate_python(facts)


def dump_manifest(manifest: ManifestFacts) -> dict[str, Any]:
    """The manifest as plain JSON types, with the keys it was given, in that order (none added, none dropped)."""
    return manifest.model_dump(mode="json", by_alias=True, exclude_unset=True)


__all__ = [
    "TARGET_FACTS", "CaptureFacts", "CheckpointWeights", "FileEntry", "FoldReport", "LatencyEntry", "Manifest",
    "ManifestFacts", "ModelFacts", "PackageIdentity", "ParityGate", "ParityReport", "PreprocessingFacts",
    "PublishedFigures", "RandomInitWeights", "RecipeFacts", "ReferenceExecution", "TargetFacts", "TensorSpec",
    "ToolVersions", "dump_manifest", "non_finite_paths", "not_deployable_reasons", "target_block", "weights_block",
]
