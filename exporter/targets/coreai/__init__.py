"""The Core AI target: an ``.aimodel`` asset for iOS 27 and macOS 27, proven on Apple's own Core AI runtime.

This module declares the target (its TargetSpec and its ``[coreai]`` recipe section); ``convert.py`` converts the
captured graph with coreai-torch (and coreai-opt's FP16 cast) and writes the asset's metadata, ``quantize.py``
makes its int8 candidates (coreai-opt's W8A8 quantization), ``facts.py`` its manifest block, ``card.md.j2`` its
model-card sections. The runner is ``validate/coreai_runtime.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from efexport.exporter.recipe_sections import Section
from efexport.exporter.targets.spec import TargetOption, TargetSpec, fixed_batch


class CoreAISection(Section):
    minimum_os: Literal["27"] = Field(
        "27", description="oldest iOS / macOS major version the asset runs on (Core AI starts at 27)")
    input: Literal["tensor"] = Field(
        "tensor", description="tensor: the ImageNet-normalised (1, 3, H, W) tensor the ONNX artifact takes "
                              "(float16 in an FP16 asset). No image input: the runtime takes images as CoreVideo "
                              "pixel buffers on Apple systems only, so its parity could not be proven here")
    labels: str = Field("imagenet-1k", description="class labels: imagenet-1k or a text file, one label per line")
    author: str = Field("efexport", description="asset metadata: author")
    license: str = Field("Apache-2.0 (EfficientFormer weights: see their source)",
                         description="asset metadata: license")
    version: str = Field("1", description="asset metadata: version string")


_fixed_batch = fixed_batch("Core AI assets")


def _check_recipe(recipe: Any) -> None:
    _fixed_batch(recipe)
    if recipe.precision == "int8" and recipe.quantization.method != "minmax":
        raise ValueError(f"quantization.method: {recipe.quantization.method} is not offered for Core AI int8: "
                         "coreai-opt measures activation ranges by their minimum and maximum only (minmax)")


SPEC = TargetSpec(
    name="coreai",
    title="Core AI",
    summary="Export to a Core AI asset (.aimodel, iOS 27 / macOS 27) with coreai-torch, prove parity by running it "
            "on Apple's Core AI runtime (coreai-core's Linux build here; the OS framework on macOS 27+), and "
            "package the artifact.",
    writes="model.aimodel",
    precisions=("fp32", "fp16", "int8"),
    default_recipe="coreai.toml",
    implementation="efexport.exporter.targets.coreai.convert:CoreAITarget",
    facts="efexport.exporter.targets.coreai.facts:CoreAITarget",
    embedded="efexport.exporter.targets.coreai.embedded:embedded",
    options=(
        TargetOption("--input", "coreai.input", "tensor: the ImageNet-normalised tensor the ONNX artifact takes "
                     "(the only input Core AI's runtime can be checked with here).", choices=("tensor",)),
        TargetOption("--labels", "coreai.labels", "Class labels, one per line, written into the asset's metadata "
                     "(default: the ImageNet-1k names)."),
    ),
    recipe_section=CoreAISection,
    check_recipe=_check_recipe,
    extra="coreai",
    requires=("coreai_torch=coreai-torch", "coreai=coreai-core", "coreai_opt=coreai-opt"),
    ci_runner="linux",  # converted and proven on Linux; the macOS workflow re-verifies on the OS framework
)
