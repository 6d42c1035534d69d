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


SPEC = TargetSpec(
    name="coreml",
    title="Core ML",
    summary="Export to a Core ML ML Program (.mlpackage), prove parity by executing the saved program with "
            "efexport's reference interpreter (and with Core ML itself on macOS), and package the artifact.",
    writes="model.mlpackage",
    precisions=("fp32", "fp16"),
    default_recipe="coreml.toml",
    implementation="efexport.exporter.targets.coreml.convert:CoreMLTarget",
    facts="efexport.exporter.targets.coreml.facts:CoreMLTarget",
    options=(
        TargetOption("--deployment-target", "coreml.minimum_deployment_target",
                     "Minimum iOS version (recipe default iOS16).", choices=("iOS15", "iOS16", "iOS17", "iOS18")),
        TargetOption("--compute-units", "coreml.compute_units", "Compute units recorded in the package (recipe "
                     "default ALL).", choices=("ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU")),
        TargetOption("--input", "coreml.input", "image: RGB ImageType taking pixels 0-255, normalisation in the "
                     "graph; tensor: the normalised float tensor the ONNX artifact takes (recipe default image).",
                     choices=("image", "tensor")),
        TargetOption("--labels", "coreml.labels", "Class labels, one per line (default: the ImageNet-1k names)."),
    ),
    recipe_section=CoreMLSection,
    check_recipe=fixed_batch("Core ML packages"),
    extra="coreml",
    requires=("coremltools",),
    traceable=True,
    ci_runner="linux",  # converted on Linux; the publish workflow re-verifies its bundles on macOS
)
