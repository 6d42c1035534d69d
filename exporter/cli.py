"""The ``efexport`` command line.

Console output (progress, warnings, errors) goes to stderr; ``--json`` prints one JSON document on stdout.
Exit codes: see ``exporter.errors.ExitCode`` (0 ok, 2 usage, 3 bad input, 4 output, 5 parity, 6 verify,
7 stage failed, 8 TensorRT without an engine, 9 engine required but impossible, 10 publish refused, 11 publish
failed, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 1 internal error).
"""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from efexport.exporter import interrupts
from efexport.exporter.errors import EfexportError, ExitCode

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 2 usage, 3 bad input (checkpoint, recipe, option values), 4 output exists or is not "
    "writable, 5 parity gate failed, 6 verification failed, 7 a wrapped tool failed in a stage, 8 TensorRT: "
    "portable half written but no engine built here, 9 TensorRT --require-engine: no engine possible here, "
    "10 publish refused (does not verify, gates, random weights, version taken), 11 publish destination failed "
    "(unreachable, denied, upload did not verify), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 1 internal "
    "error."
)

app = typer.Typer(
    name="efexport",
    help="Export EfficientFormer checkpoints to deployable, verified, documented artifacts.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


class Variant(str, Enum):
    l1 = "l1"
    l3 = "l3"
    l7 = "l7"


class TargetName(str, Enum):
    onnx = "onnx"
    coreml = "coreml"
    tensorrt = "tensorrt"


class Simplifier(str, Enum):
    onnxsim = "onnxsim"
    onnxslim = "onnxslim"
    none = "none"


VariantOpt = Annotated[
    Variant | None,
    typer.Option("--variant", "-v", help="EfficientFormer V1 variant. Optional with --weights: the checkpoint "
                                         "identifies it."),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", "-w", help="Checkpoint: upstream or timm layout, .pth or .safetensors. Without it "
                                         "the model is randomly initialised (artifact marked random-init).",
                 show_default=False),
]
# torch.Generator takes seeds up to 2**64 - 1; a larger one would fail deep in the load stage
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**64 - 1,
                                      help="Seed of the random initialisation (without --weights).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output root; the artifact goes to "
                                                          "OUT/efficientformer-VARIANT/TARGET-PRECISION/.")]
RecipeOpt = Annotated[
    Path | None,
    typer.Option("--recipe", help="Recipe TOML (default: recipes/TARGET.toml). Flags override its values.",
                 show_default=False),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing artifact (atomically).")]
NoPassOpt = Annotated[
    list[str] | None,
    typer.Option("--no-pass", help="Switch a fold pass off (repeatable), for diagnosis. Passes: "
                                   "fuse-conv-bn, fold-layer-scale, blend-pool-mixer, carry-mixer-scale (fp32 only), "
                                   "constant-attention-bias, fold-attention-scale, merge-heads, token-rows-mb3d "
                                   "(ONNX form), erf-gelu (below opset 20), channels-first-mb3d (Core ML form).",
                 show_default=False),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on the console.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]
ProfileOpt = Annotated[bool, typer.Option("--profile", help="Report wall time and peak memory (RSS) per pipeline "
                                                            "stage (also under \"profile\" in --json).")]


def _stderr(quiet: bool) -> Console | None:
    return None if quiet else Console(stderr=True)


def _fail(exc: EfexportError, as_json: bool) -> typer.Exit:
    stage = exc.stage
    where = f"[{stage}] " if stage else ""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(where + str(exc))}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"status": "error", "stage": stage, "error": str(exc), "exit_code": int(exc.exit_code)}))
    return typer.Exit(int(exc.exit_code))


def _run_guarded(as_json: bool, work: Any) -> Any:
    try:
        return work()
    except EfexportError as exc:
        raise _fail(exc, as_json) from None
    except KeyboardInterrupt:
        # a signal can land after the rename: then the artifact is complete and verified, never partial
        Console(stderr=True).print("[bold red]interrupted[/]: unfinished work was removed; no partial artifact is "
                                   "left")
        raise typer.Exit(int(interrupts.exit_code())) from None


def _passes_without(recipe: Any, no_pass: list[str] | None) -> list[str] | None:
    """The recipe's pass list minus ``--no-pass`` names (None when no flag was given)."""
    if not no_pass:
        return None
    from efexport.exporter.errors import RecipeError
    from efexport.exporter.passes import PASS_NAMES

    unknown = [name for name in no_pass if name not in PASS_NAMES]
    if unknown:
        raise RecipeError(f"--no-pass {unknown[0]}: no such pass; passes are {', '.join(PASS_NAMES)}")
    return [name for name in recipe.fold.passes if name not in no_pass]


def _load_target_recipe(target: str, recipe_path: Path | None, overrides: dict[str, Any],
                        no_pass: list[str] | None) -> tuple[Any, Path]:
    """The recipe file for ``target`` with the flags applied, all validated together."""
    from efexport.exporter.errors import RecipeError
    from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe

    path = recipe_path or default_recipe_path(target)
    loaded, _ = load_recipe(path)
    if loaded.target != target:
        raise RecipeError(f"recipe {path} is for target {loaded.target!r}, not {target!r}")
    return apply_overrides(loaded, overrides | {"fold.passes": _passes_without(loaded, no_pass)}), path


def _fold_table(report: dict, title: str) -> Table:
    table = Table("pass", "changed", "rewrites", "stored values", "ops", "max abs error", title=title,
                  title_justify="left")
    for r in report["passes"]:
        table.add_row(r["name"], "yes" if r["changed"] else "no", str(r["rewrites"]),
                      f"{r['stored_values_before']:,} -> {r['stored_values_after']:,}",
                      f"{r['ops_before']} -> {r['ops_after']}", f"{r['max_abs_error']:.2e}")
    table.caption = (f"errors against the unfolded model in float64; float32 noise floor (the unfolded model's own "
                     f"float32 error): {report['float32_noise_floor']:.2e}; gate {report['max_abs_gate']:.2e}")
    return table


def _summary_table(result: Any) -> Table:
    manifest = result.manifest
    parity = manifest["parity"]
    table = Table(title=f"{result.artifact}", show_header=False, title_justify="left")
    table.add_row("weights", manifest["weights"]["source"] if manifest["weights"]["source"] != "checkpoint"
                  else f"{manifest['weights']['file']} ({manifest['weights']['layout']}, "
                       f"sha256 {manifest['weights']['sha256'][:12]})")
    table.add_row("parity", f"{'passed' if parity['passed'] else 'FAILED'}: max abs {parity['max_abs']:.2e}, "
                            f"min cosine {parity['min_cosine']:.7f}, top-1 {parity['top1_agreement']:.0%} "
                            f"on {len(parity['per_input'])} inputs")
    for latency in manifest["latency"]:
        stats = latency["stats_ms"]
        threads = f", {latency['threads']} threads" if latency["threads"] else ""
        table.add_row("latency", f"p50 {stats['p50']:.2f} ms, p90 {stats['p90']:.2f} ms, p99 {stats['p99']:.2f} ms "
                                 f"({latency['backend']}, batch {latency['batch_size']}{threads})")
    if "latency_note" in manifest:
        table.add_row("latency", f"not measured: {manifest['latency_note']}")
    execution = manifest.get("reference_execution")
    if execution and execution["fp16_largest_activations"]:
        top = execution["fp16_largest_activations"][0]
        table.add_row("fp16 headroom", f"largest activation {top['max_abs']:.4g} ({top['op']} {top['var']}), "
                                       f"{top['fraction_of_limit']:.2%} of the fp16 limit")
    fold = manifest["fold"]
    table.add_row("fold", f"{len(fold['passes'])} passes, {sum(fold['op_counts_before'].values())} -> "
                          f"{sum(fold['op_counts_after'].values())} traced ops, max abs error "
                          f"{max((r['max_abs_error'] for r in fold['passes']), default=0.0):.2e}")
    table.add_row("ops", ", ".join(f"{op} {n}" for op, n in manifest["target"]["op_counts"].items()))
    return table


def _trace_table(trace: dict, limit: int = 15) -> Table:
    first = trace["first_past_rel_tol"]
    table = Table("op", "output", "max |x|", "abs error", "rel error", title_justify="left",
                  title=f"per-op trace vs {trace['baseline']}: the {limit} largest relative errors")
    for row in sorted(trace["ops"], key=lambda r: -r["rel_err"])[:limit]:
        table.add_row(row["op"], row["var"], f"{row['max_abs']:.4g}", f"{row['abs_err']:.3g}", f"{row['rel_err']:.2%}")
    where = "no op" if first is None else f"first op: {first['op']} {first['var']} ({first['rel_err']:.2%})"
    table.caption = f"past {trace['rel_tol']:.0%} relative error: {where}"
    return table


def _export(target: str, recipe_path: Path | None, overrides: dict[str, Any], no_pass: list[str] | None,
            variant: Variant | None, weights: Path | None, seed: int, out: Path, force: bool, quiet: bool,
            as_json: bool, trace: bool = False, profile: bool = False) -> None:
    """What every export command does: recipe + flags -> pipeline -> summary (console) or JSON (stdout)."""

    def work() -> Any:
        final_recipe, path = _load_target_recipe(target, recipe_path, overrides, no_pass)
        from efexport.exporter.pipeline import (  # torch: only once the flags are good
            ExportRequest,
            StageReporter,
            run_export,
        )
        from efexport.exporter.profiling import PipelineProfiler

        request = ExportRequest(variant=variant.value if variant else None, weights=weights, seed=seed,
                                out_dir=out, recipe=final_recipe, recipe_source=str(path), force=force, trace=trace)
        console = _stderr(quiet)
        result = run_export(request, StageReporter(console, PipelineProfiler() if profile else None))
        if console:
            console.print(_summary_table(result))
            if result.profile:
                console.print(_profile_table([(target, result.profile)]))
            if trace:
                from efexport.exporter.pipeline import TRACE_FILE

                console.print(_trace_table(json.loads((result.artifact / TRACE_FILE).read_text())))
        return result

    result = _run_guarded(as_json, work)
    engine = result.manifest["target"].get("engine")
    if as_json:
        manifest = result.manifest
        print(json.dumps({"status": "ok" if engine is None or engine["built"] else "no-engine",
                          "artifact": str(result.artifact), "variant": manifest["model"]["variant"],
                          "weights": manifest["weights"], "parity": {k: manifest["parity"][k] for k in (
                              "passed", "max_abs", "mean_abs", "max_rel", "min_cosine", "top1_agreement",
                              "mean_top5_overlap")},
                          "latency": manifest["latency"], "latency_note": manifest.get("latency_note"),
                          "engine": engine, "stage_seconds": result.stage_seconds}
                         | ({"profile": result.profile} if result.profile else {}), indent=2))
    if engine is not None and not engine["built"]:
        if not quiet:
            Console(stderr=True).print(f"[yellow]no TensorRT engine built:[/] {escape(engine['reason'])}. The "
                                       "artifact holds the prepared ONNX, build_engine.sh and engine.json: run "
                                       "build_engine.sh on the serving GPU. (exit code 8)", highlight=False)
        raise typer.Exit(int(ExitCode.NO_ENGINE))


@app.command("onnx")
def onnx_command(
    variant: VariantOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = Path("artifacts"),
    recipe: RecipeOpt = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (recipe default 17).",
                                              show_default=False)] = None,
    dynamic_batch: Annotated[bool | None, typer.Option("--dynamic-batch/--static-batch",
                                                       help="Dynamic batch axis, or a static batch of 1 "
                                                            "(recipe default: static).",
                                                       show_default=False)] = None,
    simplifier: Annotated[Simplifier | None, typer.Option("--simplifier", help="Graph simplifier "
                                                          "(recipe default onnxsim).", show_default=False)] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Input height and width; the attention "
                                                   "bias allows only a 7x7 token grid (224).",
                                                   show_default=False)] = None,
    no_pass: NoPassOpt = None,
    force: ForceOpt = False,
    profile: ProfileOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export to ONNX, prove parity with ONNX Runtime, measure latency, and package the artifact.

    Writes OUT/efficientformer-VARIANT/onnx-fp32/ with model.onnx, manifest.json and reference_io.npz.
    """
    _export("onnx", recipe, {
        "export.opset": opset, "export.dynamic_batch": dynamic_batch,
        "export.simplifier": simplifier.value if simplifier else None, "export.image_size": image_size,
    }, no_pass, variant, weights, seed, out, force, quiet, as_json, profile=profile)


class Precision(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class DeploymentTarget(str, Enum):
    iOS15 = "iOS15"
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"


class ComputeUnits(str, Enum):
    ALL = "ALL"
    CPU_ONLY = "CPU_ONLY"
    CPU_AND_NE = "CPU_AND_NE"
    CPU_AND_GPU = "CPU_AND_GPU"


class InputKind(str, Enum):
    image = "image"
    tensor = "tensor"


@app.command("coreml")
def coreml_command(
    variant: VariantOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = Path("artifacts"),
    recipe: RecipeOpt = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help="Compute precision of the ML Program "
                                                        "(recipe default fp16).", show_default=False)] = None,
    deployment_target: Annotated[DeploymentTarget | None, typer.Option(
        "--deployment-target", help="Minimum iOS version (recipe default iOS16).", show_default=False)] = None,
    compute_units: Annotated[ComputeUnits | None, typer.Option(
        "--compute-units", help="Compute units recorded in the package (recipe default ALL).",
        show_default=False)] = None,
    input_kind: Annotated[InputKind | None, typer.Option(
        "--input", help="image: RGB ImageType taking pixels 0-255, normalisation in the graph; tensor: the "
                        "normalised float tensor the ONNX artifact takes (recipe default image).",
        show_default=False)] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Class labels, one per line (default: the "
                                                "ImageNet-1k names).", show_default=False)] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Per-op trace of FP16 rounding error (op_trace.json in "
                                        "the artifact, worst ops printed): find the layer that diverges.")] = False,
    no_pass: NoPassOpt = None,
    force: ForceOpt = False,
    profile: ProfileOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export to a Core ML ML Program (.mlpackage), prove parity by executing the saved program with efexport's
    reference interpreter (and with Core ML itself on macOS), and package the artifact.

    Writes OUT/efficientformer-VARIANT/coreml-PRECISION/ with model.mlpackage, manifest.json and reference_io.npz.
    """
    _export("coreml", recipe, {
        "precision": precision.value if precision else None,
        "coreml.minimum_deployment_target": deployment_target.value if deployment_target else None,
        "coreml.compute_units": compute_units.value if compute_units else None,
        "coreml.input": input_kind.value if input_kind else None,
        "coreml.labels": str(labels) if labels else None,
    }, no_pass, variant, weights, seed, out, force, quiet, as_json, trace, profile)


class TensorRTPrecision(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"
    fp32 = "fp32"


@app.command("tensorrt")
def tensorrt_command(
    variant: VariantOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = Path("artifacts"),
    recipe: RecipeOpt = None,
    precision: Annotated[TensorRTPrecision | None, typer.Option(
        "--precision", help="Engine precision (recipe default fp16; LayerNorm and softmax stay fp32).",
        show_default=False)] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset of the prepared graph (recipe default "
                                              "17: TensorRT 8.6+).", show_default=False)] = None,
    batch_profile: Annotated[str | None, typer.Option("--batch-profile", help="Batch sizes min,opt,max of the "
                                                      "optimization profile (recipe default 1,8,64).",
                                                      show_default=False)] = None,
    workspace_mib: Annotated[int | None, typer.Option("--workspace-mib", help="Builder workspace limit in MiB.",
                                                      show_default=False)] = None,
    optimization_level: Annotated[int | None, typer.Option("--optimization-level", help="Builder optimisation "
                                                           "level 0-5 (recipe default 3).", show_default=False)] = None,
    require_engine: Annotated[bool, typer.Option("--require-engine", help="Fail (exit 9, nothing written) when no "
                                                 "engine can be built here, instead of writing the portable half "
                                                 "and exiting 8.")] = False,
    no_pass: NoPassOpt = None,
    force: ForceOpt = False,
    profile: ProfileOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Prepare a TensorRT build for A100-class GPUs: TensorRT-ready ONNX (checked against the ops TensorRT
    parses), build recipe, build_engine.sh (trtexec) and engine.json; where TensorRT and a GPU exist, also build
    model.plan and measure its parity and latency.

    Writes OUT/efficientformer-VARIANT/tensorrt-PRECISION/. Exit code 8: written, but no engine could be built
    here (no TensorRT or no GPU); the reason is printed and recorded in engine.json.
    """
    batches = None
    if batch_profile is not None:
        try:
            batches = [int(part) for part in batch_profile.split(",")]
        except ValueError:
            raise _fail(_usage(f"--batch-profile {batch_profile}: give three batch sizes, e.g. 1,8,64"),
                        as_json) from None
    _export("tensorrt", recipe, {
        "precision": precision.value if precision else None, "export.opset": opset, "tensorrt.profile": batches,
        "tensorrt.workspace_mib": workspace_mib, "tensorrt.optimization_level": optimization_level,
        "tensorrt.require_engine": require_engine or None,
    }, no_pass, variant, weights, seed, out, force, quiet, as_json, profile=profile)


def _usage(message: str) -> EfexportError:
    from efexport.exporter.errors import UsageError

    return UsageError(message)


def _export_one(target: str, overrides: dict[str, Any], variant: Variant | None, weights: Path | None, seed: int,
                out: Path, force: bool, console: Console | None, bundle_dir: Path | None, profile: bool,
                shared: Any) -> dict:
    """One target of ``efexport all``: its outcome as a row; a user-facing error is a failed row, not an abort."""
    from efexport.exporter.bundle import write_bundle
    from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
    from efexport.exporter.profiling import PipelineProfiler, release_memory

    row: dict[str, Any] = {"target": target}
    start = time.perf_counter()
    reporter = StageReporter(console, PipelineProfiler() if profile else None)
    try:
        recipe, path = _load_target_recipe(target, None, overrides, None)
        request = ExportRequest(variant=variant.value if variant else None, weights=weights, seed=seed, out_dir=out,
                                recipe=recipe, recipe_source=str(path), force=force)
        result = run_export(request, reporter, shared)
        engine = result.manifest["target"].get("engine")
        row |= {"status": "ok" if engine is None or engine["built"] else "no-engine", "exit_code": 0,
                "artifact": str(result.artifact), "package": result.manifest["package"],
                "parity_max_abs": result.manifest["parity"]["max_abs"]}
        if bundle_dir is not None:
            row["bundle"] = write_bundle(result.artifact, bundle_dir).to_dict()
    except EfexportError as exc:
        row |= {"status": "failed", "exit_code": int(exc.exit_code), "stage": exc.stage, "error": str(exc)}
        if console:
            where = f"[{exc.stage}] " if exc.stage else ""
            console.print(f"[bold red]{target} failed:[/] {escape(where + str(exc))}", highlight=False)
    release_memory()  # the next target starts from what is in use, not from this one's high-water mark
    row["seconds"] = round(time.perf_counter() - start, 1)
    if reporter.profiler:
        row["profile"] = reporter.profiler.to_dict()  # the stages that ran, a failed one included
    return row


def _profile_table(profiles: list[tuple[str, dict]]) -> Table:
    """Wall time and peak RSS per stage of each profiled export, and the peak over all of them."""
    from efexport.exporter.profiling import format_bytes

    table = Table("target", "stage", "seconds", "peak RSS", "RSS after", title="pipeline profile",
                  title_justify="left")
    for target, profile in profiles:
        for stage in profile["stages"]:
            mark = "" if stage["completed"] else " (failed)"
            table.add_row(target, stage["stage"] + mark, f"{stage['seconds']:.1f}",
                          format_bytes(stage["peak_rss_bytes"]), format_bytes(stage["rss_after_bytes"]))
        table.add_row(target, "[bold]all stages[/]", f"{profile['seconds']:.1f}",
                      format_bytes(profile["peak_rss_bytes"]), "", end_section=True)
    peak = max(profile["peak_rss_bytes"] for _, profile in profiles)
    methods = sorted({profile["method"] for _, profile in profiles if profile["method"]})
    table.caption = f"peak RSS over all: {format_bytes(peak)} (measured by {', '.join(methods) or 'nothing'})"
    return table


@app.command("all")
def all_command(
    variant: VariantOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = Path("artifacts"),
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated targets, each with its default "
                                                           "recipe.")] = "onnx,coreml,tensorrt",
    bundle_dir: Annotated[Path | None, typer.Option("--bundle-dir", help="Also write each package's reproducible "
                                                    "bundle (.zip + .sha256) here.", show_default=False)] = None,
    require_engine: Annotated[bool, typer.Option("--require-engine", help="TensorRT: fail (exit 9) when no engine "
                                                 "can be built here.")] = False,
    force: ForceOpt = False,
    profile: ProfileOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export one variant to every target (ONNX, Core ML, TensorRT), one after another; a failing target does not
    stop the others. Exit 0 when every target wrote a verified package (a TensorRT package without an engine
    counts, unless --require-engine); otherwise the exit code of the first failure."""
    names = [name.strip() for name in targets.split(",") if name.strip()]
    unknown = [name for name in names if name not in TargetName.__members__]
    if unknown or not names:
        raise _fail(_usage(f"--targets {targets}: choose from {', '.join(TargetName.__members__)}"), as_json)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # the second export of a target would only find the first one's package in its way
        raise _fail(_usage(f"--targets {targets}: {', '.join(twice)} given twice"), as_json)
    if bundle_dir is not None:  # before any export: a package must not be written only to fail at its bundle
        from efexport.exporter.output import check_output_root

        _run_guarded(as_json, lambda: check_output_root(bundle_dir))
    from efexport.exporter.pipeline import SharedInputs

    console = _stderr(quiet)
    rows = []
    shared = SharedInputs()  # the model is loaded, and its reference outputs computed, once for all targets
    try:
        for name in names:
            overrides = {"tensorrt.require_engine": True} if name == "tensorrt" and require_engine else {}
            rows.append(_export_one(name, overrides, variant, weights, seed, out, force, console, bundle_dir,
                                    profile, shared))
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]: the target in progress left no partial package")
        raise typer.Exit(int(interrupts.exit_code())) from None
    failed = [row for row in rows if row["status"] == "failed"]
    profiles = [(row["target"], row["profile"]) for row in rows if row.get("profile")]
    if as_json:
        overall = {"peak_rss_bytes": max(p["peak_rss_bytes"] for _, p in profiles)} if profiles else {}
        print(json.dumps({"status": "failed" if failed else "ok", "targets": rows} | overall, indent=2))
    if console:
        table = Table("target", "status", "package", "seconds", title="efexport all", title_justify="left")
        for row in rows:
            where = row.get("artifact") or f"[{row.get('stage') or '-'}] {row['error']}"
            table.add_row(row["target"], row["status"], escape(where), f"{row['seconds']:.1f}")
        console.print(table)
        if profiles:
            console.print(_profile_table(profiles))
    if failed:
        raise typer.Exit(failed[0]["exit_code"])


@app.command("fold")
def fold_command(
    variant: VariantOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    target: Annotated[TargetName, typer.Option("--target", help="Whose recipe's passes to run.")] = TargetName.onnx,
    no_pass: NoPassOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the fold passes alone and report each: changed or not, stored values and ops before/after, and its
    parity error against the unfolded model. Writes nothing.
    """
    from efexport.exporter.stages.fold import fold_model, fold_probe
    from efexport.exporter.stages.load import load_model
    from efexport.validate.reference import make_reference_inputs

    def work() -> dict:
        final_recipe, _ = _load_target_recipe(target.value, recipe, {}, no_pass)
        loaded = load_model(weights, variant.value if variant else None, seed)
        parity = final_recipe.parity
        inputs, kinds = make_reference_inputs(parity.seed, parity.noise_inputs, parity.image_inputs,
                                              final_recipe.export.image_size)
        folded = fold_model(loaded.model, list(final_recipe.fold.passes), fold_probe(inputs, kinds),
                            final_recipe.fold.max_abs)  # the same probe as the export pipeline
        return {"variant": loaded.variant, "weights": loaded.weights, "max_abs_allowed": final_recipe.fold.max_abs}\
            | folded.report()

    report = _run_guarded(as_json, work)
    if as_json:
        print(json.dumps(report, indent=2))
    elif not quiet:
        Console().print(_fold_table(report, f"EfficientFormer-{report['variant']} fold passes"))


@app.command("verify")
def verify_command(
    path: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json) or its bundle "
                                              "(.zip; its .sha256 beside it is checked too).")],
    threads: Annotated[int, typer.Option("--threads", min=1, help="Runtime threads for the parity re-run.")] = 2,
    latency: Annotated[bool, typer.Option("--latency", help="Also time every deployment runtime present here (e.g. "
                                                           "Core ML on macOS), in the manifests' schema.")] = False,
    report_file: Annotated[Path | None, typer.Option("--report", help="Write the verification report (JSON) to "
                                                     "this file.", show_default=False)] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-check a package or bundle anywhere: safe bundle members, the manifest against its schema, every file's
    sha256, then parity from reference_io.npz on every runtime of the target present on this machine."""
    from efexport.exporter.verify import verify_package

    report = _run_guarded(as_json, lambda: verify_package(path, threads, latency))
    document = json.dumps(report.to_dict(), indent=2)
    if report_file is not None:
        try:
            from efexport.exporter.output import write_atomically

            write_atomically(report_file, document + "\n")
        except OSError as exc:
            from efexport.exporter.errors import OutputError

            raise _fail(OutputError(f"--report {report_file}: cannot write it: {exc.strerror or exc}"),
                        as_json) from None
    if as_json:
        print(document)
    console = _stderr(quiet)
    if console:
        if report.passed:
            parity = report.parity
            console.print(f"[green]verified[/] {escape(str(path))}: {report.files_checked} files match the manifest; "
                          f"parity max abs {parity.max_abs:.2e}, min cosine {parity.min_cosine:.7f}", highlight=False)
        else:
            for problem in report.problems:
                console.print(f"[bold red]verify failed:[/] {escape(problem)}", highlight=False)
        for backend, why in report.not_checked_here.items():
            console.print(f"[yellow]not checked here:[/] {backend}: {escape(why)}", highlight=False)
        for backend, parity in report.runtime_parity.items():
            console.print(f"parity on {backend}: max abs {parity['max_abs']:.2e}, min cosine "
                          f"{parity['min_cosine']:.7f}", highlight=False)
        for entry in report.latency:
            stats = entry["stats_ms"]
            console.print(f"latency {entry['backend']} batch {entry['batch_size']}: p50 {stats['p50']:.2f} ms, "
                          f"p90 {stats['p90']:.2f} ms", highlight=False)
    if not report.passed:
        raise typer.Exit(int(ExitCode.VERIFY_FAILED))


@app.command("bundle")
def bundle_command(
    package: Annotated[Path, typer.Argument(help="A package directory, e.g. "
                                                 "artifacts/efficientformer-l3/coreml-fp16.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the bundle goes.")] = Path("artifacts/bundles"),
    threads: Annotated[int, typer.Option("--threads", min=1, help="Runtime threads for the verification.")] = 2,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify a package, then write it as one reproducible zip (same package, same bytes) with a sha256sum file:
    OUT/efficientformer-VARIANT-TARGET-PRECISION.zip and .zip.sha256."""
    from efexport.exporter.bundle import is_bundle, write_bundle

    def work() -> Any:
        if is_bundle(package) and package.is_file():
            raise _usage(f"{package} is a bundle already: efexport bundle takes a package directory "
                         "(efexport verify checks a bundle)")
        _verified_or_fail(package, threads)
        return write_bundle(package, out)

    bundle = _run_guarded(as_json, work)
    if as_json:
        print(json.dumps(bundle.to_dict(), indent=2))
    elif not quiet:
        Console(stderr=True).print(f"[green]bundled[/] {escape(str(bundle.path))} ({bundle.bytes:,} bytes, sha256 "
                                   f"{bundle.sha256})", highlight=False)


def _verified_or_fail(package: Path, threads: int) -> None:
    from efexport.exporter.errors import VerifyError
    from efexport.exporter.verify import verify_package

    report = verify_package(package, threads)
    if not report.passed:
        raise VerifyError(f"{package} does not verify: " + "; ".join(report.problems[:5]))


def _batch_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise _usage(f"{flag} {text}: give comma-separated integers, e.g. 1,2,4,8") from None
    return values


def _bench_table(report: dict) -> Table:
    title = f"efexport bench: batch 1, host end-to-end, {report['threads']} threads, {report['device']['cpu']}"
    table = Table("variant", "backend", "p50 ms", "p90 ms", "p99 ms", "noise", "windows", "images/s", "GFLOP/s",
                  "of peak", "vs eager", title=title, title_justify="left")
    for variant in report["variants"]:
        for b in variant["backends"]:
            latency = b["latency"]
            stats, method = latency["stats_ms"], latency["method"]
            windows = f"{method['windows']}" + ("" if method["converged"] else " [yellow](not converged)[/]")
            table.add_row(variant["variant"], b["name"], f"{stats['p50']:.2f}", f"{stats['p90']:.2f}",
                          f"{stats['p99']:.2f}", f"{latency['noise']:.1%}", windows,
                          f"{latency['images_per_second']:.1f}", f"{b['gflops_per_s']:.1f}",
                          f"{b['fraction_of_matmul_peak']:.0%}", f"{b['speedup_over_eager']:.2f}x")
        cost, published = variant["cost"], variant["published"]
        table.add_row(variant["variant"], f"[dim]cost: {cost['gmacs']:.2f} GMACs (published {published['gmacs']}), "
                                          f"{cost['pytorch_parameters'] / 1e6:.2f} M parameters (published "
                                          f"{published['params_m']})[/]", end_section=True)
    peak = report["machine_matmul_peak"]
    table.caption = (f"{report['method']}. Peak for comparison: {peak['what']} reaches {peak['gflops_per_s']:.1f} "
                     "GFLOP/s here.")
    return table


def _sweep_table(report: dict) -> Table | None:
    rows = [(v["variant"], t) for v in report["variants"] for t in v["throughput"]]
    if not rows:
        return None
    table = Table("variant", "backend", "batch", "p50 ms", "images/s", "GFLOP/s", "noise", title="throughput by batch",
                  title_justify="left")
    for variant, t in rows:
        latency = t["latency"]
        table.add_row(variant, t["backend"], str(t["batch_size"]), f"{latency['stats_ms']['p50']:.2f}",
                      f"{t['images_per_second']:.1f}", f"{t['gflops_per_s']:.1f}", f"{latency['noise']:.1%}")
    return table


@app.command("bench")
def bench_command(
    variants: Annotated[list[Variant] | None, typer.Option("--variant", "-v", help="Variant to benchmark "
                                                           "(repeatable; optional with --weights).",
                                                           show_default=False)] = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output root: built packages are looked up under "
                                      "OUT/efficientformer-VARIANT/, and the report and plots go to OUT/bench/ "
                                      "unless --report-dir says otherwise.")] = Path("artifacts"),
    targets: Annotated[str, typer.Option("--targets", help="Whose built packages to time, comma-separated (those "
                                                           "whose runtime is present here).")] = "onnx,coreml,tensorrt",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads of every CPU runtime (PyTorch "
                                         "intra-op, ONNX Runtime intra-op), pinned for the whole run.")] = 2,
    batches: Annotated[str, typer.Option("--batches", help="Batch sizes of the throughput sweep on ONNX Runtime "
                                         "(plain and folded exports); empty for none.")] = "1,2,4,8,16,32",
    compile_model: Annotated[bool, typer.Option("--compile", help="Also time torch.compile of the folded model "
                                                "(compiling takes minutes).")] = False,
    warmup_runs: Annotated[int, typer.Option("--warmup-runs", min=0, help="Untimed calls per backend first.")] = 10,
    window_runs: Annotated[int, typer.Option("--window-runs", min=1, help="Timed calls per window.")] = 20,
    stable_within: Annotated[float, typer.Option("--stable-within", min=0.001, max=0.999, help="Windows continue "
                                                 "until the medians of the last 3 agree within this relative "
                                                 "spread...")] = 0.05,
    max_windows: Annotated[int, typer.Option("--max-windows", min=3, help="...or this many windows ran (reported "
                                             "as not converged).")] = 12,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Where bench.json and the PNG plots go "
                                                    "(default OUT/bench).", show_default=False)] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write bench.json only.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Time the model on every backend a user could pick, interleaved in one process: PyTorch eager (as loaded
    and folded), ONNX Runtime on a plain torch.onnx.export and on efexport's folded export, optionally
    torch.compile, and every built package whose runtime is present here. Windows of timed calls run until the
    last three agree; p50/p90/p99 with the spread as noise; a throughput sweep by batch; MACs from efexport's
    graph and achieved GFLOP/s. Writes bench.json and latency.png, throughput.png, accuracy.png (measured latency
    against the paper's published top-1 and iPhone 12 figures, labelled as published)."""
    from efexport.exporter.bench import BenchSettings, run_bench
    from efexport.exporter.models.efficientformer import CONFIGS
    from efexport.exporter.output import check_output_root, write_atomically
    from efexport.exporter.stages.package import published_figures
    from efexport.validate.latency import WindowRule
    from efexport.validate.plots import write_plots

    # a wide table: keep it whole when stderr is a pipe or a CI log, where rich would assume 80 columns
    console = None if quiet else Console(stderr=True, width=None if sys.stderr.isatty() else 150)

    def work() -> tuple[dict, dict]:
        if not variants and weights is None:
            raise _usage("give --variant (repeatable) or --weights")
        target_names = tuple(name.strip() for name in targets.split(",") if name.strip())
        settings = BenchSettings(
            variants=tuple(v.value for v in variants) if variants else (None,), weights=weights, seed=seed,
            threads=threads, rule=WindowRule(warmup_runs, window_runs, 3, stable_within, max_windows),
            batches=_batch_list(batches, "--batches"), targets=target_names, packages_root=out,
            compile=compile_model)
        progress = (lambda message: console.print(f"[dim]bench:[/] {escape(message)}", highlight=False)) \
            if console else (lambda _: None)
        directory = report_dir or out / "bench"
        check_output_root(directory)  # before minutes of measuring
        report = run_bench(settings, progress)
        written = {"report": str(write_atomically(directory / "bench.json", json.dumps(report, indent=2) + "\n"))}
        if not no_plots:
            published = {c.variant: published_figures(c) for c in CONFIGS.values()}
            written |= {name: str(path) for name, path in write_plots(report, directory, published).items()}
        return report, written

    report, written = _run_guarded(as_json, work)
    if as_json:
        print(json.dumps(report | {"written": written}, indent=2))
    if console:
        console.print(_bench_table(report))
        sweep = _sweep_table(report)
        if sweep is not None:
            console.print(sweep)
        for variant in report["variants"]:
            for what, why in variant["not_measured"].items():
                console.print(f"[yellow]not measured[/] {variant['variant']} {escape(what)}: {escape(why)}",
                              highlight=False)
        console.print("written: " + ", ".join(escape(p) for p in written.values()), highlight=False)


@app.command("variants")
def variants_command(as_json: JsonOpt = False) -> None:
    """List the supported EfficientFormer variants with their published size and cost."""
    from efexport.exporter.models.efficientformer import CONFIGS

    rows = [{"variant": c.variant, "widths": list(c.widths), "depths": list(c.depths), "mb3d_blocks": c.num_mb3d,
             "published_params_m": c.published_params_m, "published_gmacs": c.published_gmacs}
            for c in CONFIGS.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("variant", "widths", "depths", "MB3D", "params (M, published)", "GMACs (published)")
    for r in rows:
        table.add_row(r["variant"], str(r["widths"]), str(r["depths"]), str(r["mb3d_blocks"]),
                      f"{r['published_params_m']:.2f}", f"{r['published_gmacs']:.2f}")
    Console().print(table)


def _latency_comparison_table(rows: list[dict]) -> Table:
    table = Table("backend", "measured", "batch", "precision", "previous p50 (ms)", "p50 (ms)", "new / previous",
                  title=f"latency against {rows[0]['previous_version']}", title_justify="left")
    for r in rows:
        table.add_row(r["backend"], r["measured"], str(r["batch_size"]), r["precision"], f"{r['previous_p50_ms']:.2f}",
                      f"{r['p50_ms']:.2f}", f"{r['ratio']:.2f}x")
    return table


@app.command("publish")
def publish_command(
    path: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json) or its bundle "
                                              "(.zip).")],
    to: Annotated[str, typer.Option("--to", help="Registry: a local directory or s3://BUCKET/PREFIX.",
                                    show_default=False)],
    version: Annotated[str | None, typer.Option("--version", help="Version to publish under (default: the efexport "
                                                "version recorded in the package's manifest).",
                                                show_default=False)] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="Endpoint of an S3-compatible store "
                                                     "such as MinIO (default: $AWS_ENDPOINT_URL, else AWS).",
                                                     show_default=False)] = None,
    evidence: Annotated[list[Path] | None, typer.Option("--evidence", help="A JSON file stored with the package "
                                                        "under evidence/ and listed in the index (repeatable).",
                                                        show_default=False)] = None,
    allow_random_weights: Annotated[bool, typer.Option("--allow-random-weights", help="Publish a package with "
                                                       "random-init weights (refused otherwise).")] = False,
    allow_no_engine: Annotated[bool, typer.Option("--allow-no-engine", help="Publish a TensorRT package whose "
                                                  "engine was not built (refused otherwise).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a different package already published under "
                                        "this version.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Runtime threads for the parity re-run.")] = 2,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify a package and publish it to a registry: bundle, manifest, model card and evidence under
    MODEL/VERSION/TARGET/SHA256-PREFIX/, listed in index.json once every upload is read back and matches.

    Publishing the same package again changes nothing. Exit code 10: refused (does not verify, a gate failed,
    random weights, the version holds a different package); 11: the destination failed (unreachable, denied,
    an upload did not verify).
    """
    from efexport.exporter.publish import open_store, publish

    def work() -> Any:
        store = open_store(to, endpoint_url)
        return publish(path, store, version, allow_random_weights=allow_random_weights,
                       allow_no_engine=allow_no_engine, force=force, evidence=evidence or (), threads=threads)

    result = _run_guarded(as_json, work)
    console = _stderr(quiet)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    if console:
        console.print(f"[green]{result.status}[/] {result.model} {result.version} {result.target} -> "
                      f"{escape(result.destination)} (sha256 {result.sha256[:12]})", highlight=False)
        if result.latency_comparison:
            console.print(_latency_comparison_table(list(result.latency_comparison)))


def main() -> None:
    interrupts.install()  # SIGTERM unwinds like Ctrl-C, so staging directories are removed on the way out
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(interrupts.exit_code()))
