"""``efexport fold``: the fold passes alone, each reported; writes nothing."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import json_out, run_guarded
from efexport.exporter.cli.export import load_target_recipe
from efexport.exporter.cli.tables import fold_table
from efexport.exporter.targets import TARGETS


def fold_command(
    variant: options.Variant = None,
    weights: options.Weights = None,
    seed: options.Seed = 0,
    recipe: options.Recipe = None,
    target: Annotated[options.choice("TargetName", tuple(TARGETS)), typer.Option(  # type: ignore[valid-type]
        "--target", "-t", help="Whose recipe's passes to run.")] = "onnx",
    no_pass: options.NoPass = None,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Run the fold passes alone and report each: changed or not, stored values and ops before/after, and its
    parity error against the unfolded model. Writes nothing.
    """

    def work() -> dict:
        final_recipe, _ = load_target_recipe(str(target), recipe, {}, no_pass)
        from efexport.exporter.stages.fold import fold_model, fold_probe  # torch: once the flags are good
        from efexport.exporter.stages.load import load_model
        from efexport.validate.reference import make_reference_inputs

        loaded = load_model(weights, options.plain(variant), seed)
        parity = final_recipe.parity
        inputs, kinds = make_reference_inputs(parity.seed, parity.noise_inputs, parity.image_inputs,
                                              final_recipe.export.image_size)
        folded = fold_model(loaded.model, list(final_recipe.fold.passes), fold_probe(inputs, kinds),
                            final_recipe.fold.max_abs)  # the same probe as the export pipeline
        return {"variant": loaded.variant, "model": loaded.package_name, "weights": loaded.weights,
                "max_abs_allowed": final_recipe.fold.max_abs} | folded.report()

    report = run_guarded(as_json, work)
    if as_json:
        json_out(report)
    elif not quiet:
        Console().print(fold_table(report, f"{report['model']} fold passes"))
