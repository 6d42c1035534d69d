"""The export commands: one per registered target, built from its TargetSpec, and ``efexport all``."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter import interrupts
from efexport.exporter.cli.console import fail, json_out, run_guarded, stderr, target_names
from efexport.exporter.cli.signature import switch, with_options
from efexport.exporter.cli.tables import profile_table, summary_table, trace_table
from efexport.exporter.errors import EfexportError, RecipeError, UsageError
from efexport.exporter.precisions import PRECISIONS, passes_for
from efexport.exporter.targets import TARGETS, TargetOption, TargetSpec


def passes_without(recipe: Any, no_pass: list[str] | None) -> list[str] | None:
    """The recipe's pass list minus ``--no-pass`` names (None when no flag was given)."""
    if not no_pass:
        return None
    from efexport.exporter.passes import PASS_NAMES

    unknown = [name for name in no_pass if name not in PASS_NAMES]
    if unknown:
        raise RecipeError(f"--no-pass {unknown[0]}: no such pass; passes are {', '.join(PASS_NAMES)}")
    return [name for name in recipe.fold.passes if name not in no_pass]


def load_target_recipe(target: str, recipe_path: Path | None, overrides: dict[str, Any],
                       no_pass: list[str] | None) -> tuple[Any, Path]:
    """The recipe file for ``target`` with the flags applied, all validated together."""
    from efexport.exporter.recipes import apply_overrides, default_recipe_path, load_recipe

    path = recipe_path or default_recipe_path(target)
    loaded, _ = load_recipe(path)
    if loaded.target != target:
        raise RecipeError(f"recipe {path} is for target {loaded.target!r}, not {target!r}")
    passes = passes_without(loaded, no_pass)
    if overrides.get("precision") and overrides["precision"] != loaded.precision:
        # --precision: the recipe's passes, less those the new precision refuses (precisions.refused_passes)
        passes = passes_for(overrides["precision"], passes if passes is not None else list(loaded.fold.passes))
    return apply_overrides(loaded, overrides | {"fold.passes": passes}), path


def _option_parameter(option: TargetOption) -> inspect.Parameter:
    """A target's declared option as a typer parameter; None as default means "not given": the recipe decides."""
    if option.kind is bool and "/" not in option.flag:  # a plain switch: only "on" overrides the recipe
        annotation: Any = bool
        default: Any = False
    else:
        kind = options.choice(option.param, option.choices) if option.choices else option.kind
        annotation = kind | None
        default = None
    declared = typer.Option(option.flag, help=option.help, show_default=False)
    return inspect.Parameter(option.param, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, declared])


def _shared_parameters(spec: TargetSpec) -> list[inspect.Parameter]:
    """The options every export command has, in the order --help shows them."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    precision = Annotated[options.choice("Precision", spec.precisions) | None, typer.Option(
        "--precision", show_default=False,
        help=f"Precision of the exported model: {', '.join(spec.precisions)} (recipe default).")]
    shared = [("variant", options.Variant, None), ("weights", options.Weights, None), ("seed", options.Seed, 0),
              ("out", options.Out, Path("artifacts")), ("recipe", options.Recipe, None),
              ("precision", precision, None)]
    if any(PRECISIONS[name].needs_calibration for name in spec.precisions):
        shared += [("calibration", options.Calibration, None),
                   ("calibration_samples", options.CalibrationSamples, None),
                   ("calibration_method", options.CalibrationMethod, None)]
    return [inspect.Parameter(name, keyword, default=default, annotation=annotation)
            for name, annotation, default in shared]


def _closing_parameters(spec: TargetSpec) -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    closing = []
    if spec.traceable:
        trace = Annotated[bool, typer.Option("--trace", help="Per-op trace of the reduced-precision rounding error "
                                             "(op_trace.json in the artifact, worst ops printed): find the layer "
                                             "that diverges.")]
        closing.append(("trace", trace, False))
    closing += [("no_pass", options.NoPass, None), ("force", options.Force, False),
                ("profile", options.Profile, False), ("quiet", options.Quiet, False), ("as_json", options.Json, False)]
    return [inspect.Parameter(name, keyword, default=default, annotation=annotation)
            for name, annotation, default in closing]


def _overrides(spec: TargetSpec, given: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Recipe keys -> values of the target's own options that were given (None: not given)."""
    overrides: dict[str, Any] = {"precision": options.plain(given.pop("precision"))}
    if "calibration_samples" in given:  # targets with an integer precision
        overrides["quantization.samples"] = given.pop("calibration_samples")
        overrides["quantization.method"] = options.plain(given.pop("calibration_method"))
    for option in spec.options:
        value = given.pop(option.param)
        if option.kind is bool and "/" not in option.flag:
            value = value or None
        elif option.choices:
            value = options.plain(value)
        if value is not None and option.parse:
            try:
                value = option.parse(value)
            except ValueError as exc:
                raise fail(UsageError(str(exc)), as_json) from None
        overrides[option.recipe_key] = value
    return overrides


def export_command(spec: TargetSpec) -> Callable[..., None]:
    """``efexport <target>``: its options are the shared ones plus what the spec declares."""

    def command(**given: Any) -> None:
        as_json = given.pop("as_json")
        overrides = _overrides(spec, given, as_json)
        given["variant"] = options.plain(given["variant"])
        run_export_command(spec, overrides, as_json=as_json, **given)

    parameters = _shared_parameters(spec) + [_option_parameter(o) for o in spec.options] + _closing_parameters(spec)
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = f"{spec.name}_command"
    command.__doc__ = (f"{spec.summary}\n\nWrites OUT/MODEL-VARIANT/{spec.name}-PRECISION/ with {spec.writes}, "
                       "manifest.json, README.md (the model card) and reference_io.npz.")
    return command


def run_export_command(spec: TargetSpec, overrides: dict[str, Any], *, variant: str | None, weights: Path | None,
                       seed: int, out: Path, recipe: Path | None, no_pass: list[str] | None, force: bool,
                       profile: bool, quiet: bool, as_json: bool, trace: bool = False,
                       calibration: Path | None = None) -> None:
    """What every export command does: recipe + flags -> pipeline -> summary (console) or JSON (stdout)."""

    def work() -> Any:
        final_recipe, path = load_target_recipe(spec.name, recipe, overrides, no_pass)
        if calibration is not None and not PRECISIONS[final_recipe.precision].needs_calibration:
            raise UsageError(f"--calibration is for integer precisions; this export is {final_recipe.precision}")
        spec.load()  # a missing extra fails here, before any work, naming the extra
        from efexport.exporter.manifest_model import Manifest
        from efexport.exporter.pipeline import TRACE_FILE, ExportRequest, StageReporter, run_export  # torch: late
        from efexport.exporter.profiling import PipelineProfiler

        request = ExportRequest(variant=variant, weights=weights, seed=seed, out_dir=out, recipe=final_recipe,
                                recipe_source=str(path), force=force, trace=trace, calibration=calibration)
        console = stderr(quiet)
        result = run_export(request, StageReporter(console, PipelineProfiler() if profile else None))
        manifest = Manifest.model_validate(result.manifest)  # checked against its schema by the package stage
        if console:
            console.print(summary_table(result.artifact, manifest))
            if result.profile:
                console.print(profile_table([(spec.name, result.profile)]))
            if trace:
                console.print(trace_table(json.loads((result.artifact / TRACE_FILE).read_text())))
        return result, manifest

    result, manifest = run_guarded(as_json, work)
    outcome = spec.outcome(manifest.target) if spec.outcome else None
    if as_json:
        parity = manifest.parity
        engine = getattr(manifest.target, "engine", None)  # a target's own fact (TensorRT), not every target's
        json_out({"status": outcome.status if outcome else "ok", "artifact": str(result.artifact),
                  "variant": manifest.model.variant, "weights": manifest.weights.as_json(),
                  "parity": {"passed": parity.passed, "max_abs": parity.max_abs, "mean_abs": parity.mean_abs,
                             "max_rel": parity.max_rel, "min_cosine": parity.min_cosine,
                             "top1_agreement": parity.top1_agreement, "mean_top5_overlap": parity.mean_top5_overlap},
                  "latency": [entry.as_json() for entry in manifest.latency], "latency_note": manifest.latency_note,
                  "engine": engine.as_json() if engine is not None else None, "stage_seconds": result.stage_seconds}
                 | ({"profile": result.profile} if result.profile else {}))
    if outcome:
        if not quiet:
            Console(stderr=True).print(f"[yellow]{escape(outcome.message)}[/]", highlight=False)
        raise typer.Exit(outcome.exit_code)


def _export_one(spec: TargetSpec, recipe_path: Path | None, overrides: dict[str, Any], no_pass: list[str] | None,
                variant: str | None, weights: Path | None, seed: int, out: Path, force: bool,
                console: Console | None, bundle_dir: Path | None, profile: bool, shared: Any) -> dict:
    """One target of ``efexport all``: its outcome as a row; a user-facing error is a failed row, not an abort."""
    from efexport.exporter.bundle import write_bundle
    from efexport.exporter.manifest_model import Manifest
    from efexport.exporter.pipeline import ExportRequest, StageReporter, run_export
    from efexport.exporter.profiling import PipelineProfiler, release_memory

    row: dict[str, Any] = {"target": spec.name}
    start = time.perf_counter()
    reporter = StageReporter(console, PipelineProfiler() if profile else None)
    try:
        recipe, path = load_target_recipe(spec.name, recipe_path, overrides, no_pass)
        spec.load()
        request = ExportRequest(variant=variant, weights=weights, seed=seed, out_dir=out, recipe=recipe,
                                recipe_source=str(path), force=force)
        result = run_export(request, reporter, shared)
        manifest = Manifest.model_validate(result.manifest)  # checked against its schema by the package stage
        outcome = spec.outcome(manifest.target) if spec.outcome else None
        row |= {"status": outcome.status if outcome else "ok", "exit_code": 0, "artifact": str(result.artifact),
                "package": manifest.package.as_json(), "parity_max_abs": manifest.parity.max_abs}
        if bundle_dir is not None:
            row["bundle"] = write_bundle(result.artifact, bundle_dir).to_dict()
    except EfexportError as exc:
        row |= {"status": "failed", "exit_code": int(exc.exit_code), "stage": exc.stage, "error": str(exc)}
        if console:
            where = f"[{exc.stage}] " if exc.stage else ""
            console.print(f"[bold red]{spec.name} failed:[/] {escape(where + str(exc))}", highlight=False)
    release_memory()  # the next target starts from what is in use, not from this one's high-water mark
    row["seconds"] = round(time.perf_counter() - start, 1)
    if reporter.profiler:
        row["profile"] = reporter.profiler.to_dict()  # the stages that ran, a failed one included
    return row


def _recipes_by_target(paths: list[Path] | None) -> dict[str, Path]:
    """``--recipe FILE`` (repeatable) for ``all``: each file names its target; one file per target."""
    from efexport.exporter.recipes import load_recipe

    chosen: dict[str, Path] = {}
    for path in paths or []:
        recipe, _ = load_recipe(path)
        if recipe.target in chosen:
            raise UsageError(f"--recipe {path}: a second recipe for {recipe.target} (the first is "
                             f"{chosen[recipe.target]})")
        chosen[recipe.target] = path
    return chosen


def all_command(
    variant: options.Variant = None,
    weights: options.Weights = None,
    seed: options.Seed = 0,
    out: options.Out = Path("artifacts"),
    target: options.TargetNames = None,
    recipe: options.Recipes = None,
    bundle_dir: options.BundleDir = None,
    no_pass: options.NoPass = None,
    force: options.Force = False,
    profile: options.Profile = False,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
    targets: options.DeprecatedTargets = None,
    **switches: bool,
) -> None:
    """Export one variant to every target (or each --target), one after another; a failing target does not stop
    the others. Exit 0 when every target wrote a verified package (a TensorRT package without an engine counts,
    unless --require-engine); otherwise the exit code of the first failure."""
    names = target_names(target, targets, as_json)
    recipes = run_guarded(as_json, lambda: _recipes_by_target(recipe))
    outside = sorted(set(recipes) - set(names))
    if outside:
        raise fail(UsageError(f"--recipe: a recipe for {', '.join(outside)}, which is not among the targets"),
                   as_json)
    if bundle_dir is not None:  # before any export: a package must not be written only to fail at its bundle
        from efexport.exporter.output import check_output_root

        run_guarded(as_json, lambda: check_output_root(bundle_dir))
    from efexport.exporter.pipeline import SharedInputs

    console = stderr(quiet)
    rows = []
    shared = SharedInputs()  # the model is loaded, and its reference outputs computed, once for all targets
    try:
        for name in names:
            overrides = {option.recipe_key: True for option in TARGETS[name].options
                         if option.in_all and switches.get(option.param)}
            rows.append(_export_one(TARGETS[name], recipes.get(name), overrides, no_pass, options.plain(variant),
                                    weights, seed,
                                    out, force, console, bundle_dir, profile, shared))
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]: the target in progress left no partial package")
        raise typer.Exit(int(interrupts.exit_code())) from None
    failed = [row for row in rows if row["status"] == "failed"]
    profiles = [(row["target"], row["profile"]) for row in rows if row.get("profile")]
    if as_json:
        overall = {"peak_rss_bytes": max(p["peak_rss_bytes"] for _, p in profiles)} if profiles else {}
        json_out({"status": "failed" if failed else "ok", "targets": rows} | overall)
    if console:
        from rich.table import Table

        table = Table("target", "status", "package", "seconds", title="efexport all", title_justify="left")
        for row in rows:
            where = row.get("artifact") or f"[{row.get('stage') or '-'}] {row['error']}"
            table.add_row(row["target"], row["status"], escape(where), f"{row['seconds']:.1f}")
        console.print(table)
        if profiles:
            console.print(profile_table(profiles))
    if failed:
        raise typer.Exit(failed[0]["exit_code"])


def _all_switches() -> list[TargetOption]:
    """The targets' switches that ``efexport all`` offers (TargetOption.in_all), each applied to its target."""
    return [option for spec in TARGETS.values() for option in spec.options if option.in_all]


all_command = with_options(all_command, [switch(o.param, o.flag, o.help) for o in _all_switches()])
