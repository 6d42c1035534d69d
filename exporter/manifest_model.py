"""manifest.json (efexport.manifest/3) as typed models: the one definition of its shape.

``exporter/data/manifest.schema.json`` is generated from these models (``python -m
efexport.exporter.manifest_schema --write``; a test checks the checked-in file is what they generate), and
``exporter.stages.package.build_manifest`` writes a manifest by constructing them and dumping the result with
``dump_manifest``. Readers (the model card, publish, the CLI, verify) keep reading the written JSON as a dict.

Conventions, so that the models and the JSON Schema mean the same thing:

- Blocks are open (other keys allowed, and kept when dumped) unless they derive from ``_Closed``, whose schema
  says ``additionalProperties: false``: the top level, and the blocks where a closed shape catches mistakes.
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

import math
import re
import typing
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from efexport.exporter.models import FAMILIES, family_of
from efexport.exporter.precisions import PRECISIONS, unavailable_reason
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
Precision = Literal[tuple(n for n in PRECISIONS if unavailable_reason(n) is None)]  # type: ignore[valid-type]
Simplifier = Literal["onnxsim", "onnxslim", "none"]

Absent = SkipJsonSchema[None]  # "may be left out": None in Python, never in the JSON Schema (see _Block)

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


class _Block(BaseModel):
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


class _Closed(_Block):
    """A closed block: a key that is not a field is an error (a misspelt key is caught)."""

    model_config = ConfigDict(extra="forbid")


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

class _TargetFacts(_Block):
    """What every target writes (ExportedModel.facts); each format adds its own facts. Other keys are allowed."""

    format: Format
    model_file: RelativePath
    precision: Precision
    op_counts: OpCounts


class OnnxTarget(_TargetFacts):
    """exporter/targets/onnx/export.py: OnnxTarget.export."""

    format: Literal["onnx"]
    precision: Literal["fp32"]
    opset: PositiveInt
    simplifier: Simplifier
    dynamic_batch: bool


class CoreMLLabels(_Block):
    """The class labels built into the classifier."""

    source: str
    count: PositiveInt


class InterfaceEntry(_Block):
    """One input or output of the Core ML model as an app sees it."""

    name: NonEmptyStr
    type: str
    shape: Sequence[PositiveInt] | Absent = None


class CoreMLInterface(_Block):
    """The package's own interface (which may differ from the captured graph's inputs: an image input takes
    pixels)."""

    inputs: Annotated[Sequence[InterfaceEntry], Field(min_length=1)]
    outputs: Annotated[Sequence[InterfaceEntry], Field(min_length=1)]


class CoreMLTarget(_TargetFacts):
    """exporter/targets/coreml/convert.py: CoreMLTarget.export."""

    format: Literal["coreml"]
    precision: Literal["fp32", "fp16"]
    minimum_deployment_target: Annotated[str, Field(pattern=r"^(iOS|macOS|tvOS|watchOS|visionOS)[0-9]+$")]
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU"]
    input: Literal["image", "tensor"]
    labels: CoreMLLabels | Absent = None
    interface: CoreMLInterface


class TensorRTProfile(_Closed):
    """Batch sizes of the optimization profile."""

    min: PositiveInt
    opt: PositiveInt
    max: PositiveInt


class TensorRTBuildOptions(_Block):
    """exporter.targets.tensorrt_options.BuildOptions.to_dict."""

    input_name: NonEmptyStr
    image_size: PositiveInt
    precision: Precision
    profile: TensorRTProfile | None = Field(
        description="Batch sizes of the optimization profile; null for a static batch of 1.")
    fp32_layers: Sequence[str]
    workspace_mib: PositiveInt
    optimization_level: Annotated[int, Field(ge=0, le=5)]
    timing_cache: RelativePath
    hardware_compatibility: Literal["none", "ampere_plus"]
    version_compatible: bool


_ENGINE_BUILT = ("plan_file", "sha256", "timing_cache_sha256", "tensorrt")


class TensorRTEngine(_Block):
    """Whether model.plan was built here: the build's facts (exporter.targets.tensorrt_api.build_engine), or the
    reason there is none."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"built": {"const": True}}, "required": ["built"]},
        "then": {"required": list(_ENGINE_BUILT)},
        "else": {"required": ["reason"]},
    })

    built: bool
    reason: NonEmptyStr | Absent = None
    plan_file: RelativePath | Absent = None
    sha256: Sha256 | Absent = None
    timing_cache_sha256: Sha256 | Absent = None
    tensorrt: NonEmptyStr | Absent = None
    gpu: str | Absent = None
    compute_capability: str | Absent = None
    cuda_runtime: str | None = None
    driver: str | None = None
    build_seconds: NonNegative | Absent = None
    network_layers: Count | Absent = None
    layers_pinned_fp32: Count | Absent = None
    tf32: bool | Absent = None
    timing_cache_loaded: bool | Absent = None
    plan_bytes: Count | Absent = None

    @model_validator(mode="after")
    def _built_or_why_not(self) -> Self:
        needed = _ENGINE_BUILT if self.built else ("reason",)
        missing = [name for name in needed if name not in self.model_fields_set]
        if missing:
            raise ValueError(f"an engine with built: {str(self.built).lower()} needs {', '.join(missing)}")
        return self


class TensorRTTarget(_TargetFacts):
    """exporter/targets/tensorrt/prepare.py: TensorRTTarget.export (the prepared ONNX, build options, trtexec command,
    engine facts)."""

    format: Literal["tensorrt"]
    precision: Precision
    opset: PositiveInt
    simplifier: Simplifier
    dynamic_batch: bool
    gpu: str | Absent = None
    trtexec: Annotated[Sequence[str], Field(min_length=1)]
    build_options: TensorRTBuildOptions
    engine: TensorRTEngine


Target = Annotated[OnnxTarget | CoreMLTarget | TensorRTTarget, Field(discriminator="format")]


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


class ParityGate(ParityReport):
    """The parity gate of the export (the target's own runner against the unfolded PyTorch model), with the file
    holding its inputs and outputs."""

    reference_file: RelativePath
    compared_against: NonEmptyStr


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
    {"$comment": "Random-init weights are never deployable (exporter.stages.package.package_identity).",
     "if": _when(("weights", "source"), "random-init"), "then": _then((_DEPLOYABLE, {"const": False}))},
    {"$comment": "A TensorRT package without an engine is not deployable.",
     "if": _when(("target", "engine", "built"), False), "then": _then((_DEPLOYABLE, {"const": False}))},
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
        if self.package.deployable and isinstance(self.target, TensorRTTarget) and not self.target.engine.built:
            problems.append("a TensorRT package without an engine is not deployable")
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
    """manifest.json of a package written by efexport (ONNX, Core ML or TensorRT): what the model is, which
    weights it holds, how to feed it, what the export target made, the fold report, the parity gate and latency
    measured in the run that made it, tool versions, the recipe, and the sha256 and size of every other file in the
    package directory. Generated from exporter/manifest_model.py (python -m efexport.exporter.manifest_schema
    --write); written by exporter/stages/package.py (build_manifest) and exporter/pipeline.py; checked by
    exporter/manifest_schema.py. Top-level keys are closed (a misspelt key is an error); most nested blocks
    require what the code writes and allow additions, except where a closed shape catches mistakes (package,
    weights, published figures, latency statistics, file entries)."""

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
_TARGET: TypeAdapter[OnnxTarget | CoreMLTarget | TensorRTTarget] = TypeAdapter(Target)


def weights_block(facts: dict[str, Any]) -> RandomInitWeights | CheckpointWeights:
    """LoadedModel.weights as its typed block (the kind its ``source`` says)."""
    return _WEIGHTS.validate_python(facts)


def target_block(facts: dict[str, Any]) -> OnnxTarget | CoreMLTarget | TensorRTTarget:
    """ExportedModel.facts as the typed block of its ``format``."""
    return _TARGET.validate_python(facts)


def dump_manifest(manifest: ManifestFacts) -> dict[str, Any]:
    """The manifest as plain JSON types, with the keys it was given, in that order (none added, none dropped)."""
    return manifest.model_dump(mode="json", by_alias=True, exclude_unset=True)


__all__ = [
    "CaptureFacts", "CheckpointWeights", "CoreMLTarget", "FileEntry", "FoldReport", "LatencyEntry", "Manifest",
    "ManifestFacts", "ModelFacts", "OnnxTarget", "PackageIdentity", "ParityGate", "ParityReport",
    "PreprocessingFacts", "PublishedFigures", "RandomInitWeights", "RecipeFacts", "ReferenceExecution",
    "TensorRTEngine", "TensorRTTarget", "TensorSpec", "ToolVersions", "dump_manifest", "non_finite_paths",
    "target_block", "weights_block",
]
