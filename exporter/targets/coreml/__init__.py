"""The Core ML target: an ML Program package, verified by executing the saved program with efexport's reference
interpreter off macOS and with Core ML itself on macOS.

This module declares the target (its TargetSpec and its ``[coreml]`` recipe section); ``convert.py`` converts the
captured graph and holds its runners, ``card.md.j2`` its model-card sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from efexport.exporter.recipe_sections import Section
from efexport.exporter.targets.spec import TargetOption, TargetSpec, fixed_batch

_IOS = ("iOS15", "iOS16", "iOS17", "iOS18")


def check_recipe(recipe: object) -> None:
    """A fixed batch of 1; int8 (W8A8: iOS17's quantize/dequantize ops) needs iOS17 or later and compresses its
    weights itself; compression is for fp16/fp32 packages."""
    fixed_batch("Core ML packages")(recipe)
    settings = recipe.coreml
    if recipe.precision == "int8":
        if _IOS.index(settings.minimum_deployment_target) < _IOS.index("iOS17"):
            raise ValueError(f"coreml.minimum_deployment_target: int8 (W8A8) needs iOS17 or later (its activations "
                             f"are quantize/dequantize ops, new in iOS17), not {settings.minimum_deployment_target}")
        if settings.compress != "none":
            raise ValueError(f"coreml.compress: an int8 package's weights are int8 already; compress "
                             f"({settings.compress}) is for fp16 and fp32 packages")
    if settings.compress != "none" and "int8" not in recipe.parity.tolerances:
        raise ValueError(f"parity.tolerances.int8: a package with compressed weights (coreml.compress = "
                         f"{settings.compress}) is gated by it; the recipe has none")


class CoreMLSection(Section):
    minimum_deployment_target: Literal["iOS15", "iOS16", "iOS17", "iOS18"] = Field(
        "iOS16", description="oldest iOS the package runs on")
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU"] = Field(
        "ALL", description="compute units recorded in the package metadata and used for on-device runs")
    input: Literal["image", "tensor"] = Field(
        "image", description="image: a 224x224 RGB ImageType (normalisation in the graph); tensor: normalised "
                             "float (1, 3, H, W), as the ONNX artifact takes")
    labels: str = Field("imagenet-1k", description="class labels: imagenet-1k or a text file, one label per line")
    author: str = Field("efexport", description="MLModel author")
    license: str = Field("Apache-2.0 (EfficientFormer weights: see their source)", description="MLModel license")
    version: str = Field("1", description="MLModel version string")
    compress: Literal["none", "int8-weights", "palettize-6bit"] = Field(
        "none", description="weight compression of an fp16/fp32 package: int8-weights (linear int8, one scale per "
                            "output channel), palettize-6bit (a 64-entry k-means look-up table per weight), none")


SPEC = TargetSpec(
    name="coreml",
    title="Core ML",
    summary="Export to a Core ML ML Program (.mlpackage), prove parity by executing the saved program with "
            "efexport's reference interpreter (and with Core ML itself on macOS), and package the artifact.",
    writes="model.mlpackage",
    precisions=("fp32", "fp16", "int8"),
    default_recipe="coreml.toml",
    implementation="efexport.exporter.targets.coreml.convert:CoreMLTarget",
    facts="efexport.exporter.targets.coreml.facts:CoreMLTarget",
    embedded="efexport.exporter.targets.coreml.embedded:embedded",
    options=(
        TargetOption("--deployment-target", "coreml.minimum_deployment_target",
                     "Minimum iOS version (recipe default iOS16).", choices=("iOS15", "iOS16", "iOS17", "iOS18")),
        TargetOption("--compute-units", "coreml.compute_units", "Compute units recorded in the package (recipe "
                     "default ALL).", choices=("ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU")),
        TargetOption("--input", "coreml.input", "image: RGB ImageType taking pixels 0-255, normalisation in the "
                     "graph; tensor: the normalised float tensor the ONNX artifact takes (recipe default image).",
                     choices=("image", "tensor")),
        TargetOption("--labels", "coreml.labels", "Class labels, one per line (default: the ImageNet-1k names)."),
        TargetOption("--compress", "coreml.compress", "Weight compression of an fp16/fp32 package: int8-weights, "
                     "palettize-6bit, or none (recipe default none).",
                     choices=("none", "int8-weights", "palettize-6bit")),
    ),
    recipe_section=CoreMLSection,
    check_recipe=check_recipe,
    extra="coreml",
    requires=("coremltools",),
    traceable=True,
    ci_runner="linux",  # converted on Linux; the publish workflow re-verifies its bundles on macOS
)
