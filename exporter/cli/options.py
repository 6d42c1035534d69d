"""Option groups the commands share, declared once: every command that takes a model, an output root or a
machine-readable result spells it the same way."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from efexport.exporter.models import variant_choices
from efexport.exporter.passes import PASS_NAMES

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 2 usage, 3 bad input (checkpoint, recipe, option values, signing key), 4 output exists or "
    "is not writable, 5 parity gate failed, 6 verification failed (files, signature, provenance), 7 a wrapped tool "
    "failed in a stage (Sigstore signing included), 8 TensorRT: "
    "portable half written but no engine built here, 9 TensorRT --require-engine: no engine possible here, "
    "10 publish refused (does not verify, gates, random weights, version taken), 11 registry failed (publish or "
    "pull: unreachable, denied, upload did not verify), 12 pull: not in the registry (model, version or target), "
    "130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 1 internal "
    "error."
)



def choice(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """A choice typer checks and lists in --help (typer takes choices as an Enum); members are plain strings."""
    return StrEnum(name, {value: value for value in values})


def plain(value: StrEnum | str | None) -> str | None:
    """A chosen value as the plain string the recipe and the pipeline take."""
    return None if value is None else str(value)


# ---- the model --------------------------------------------------------------------------------------------------
VariantName = choice("VariantName", variant_choices())
Variant = Annotated[
    VariantName | None,
    typer.Option("--variant", "-v", show_default=False,
                 help="Model variant, of any registered family (efexport variants lists them). Optional with "
                      "--weights: the checkpoint identifies it."),
]
Variants = Annotated[
    list[VariantName] | None,
    typer.Option("--variant", "-v", show_default=False,
                 help="Model variant (repeatable; optional with --weights)."),
]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", "-w", show_default=False,
                 help="Checkpoint: upstream or timm layout, .pth or .safetensors. Without it the model is randomly "
                      "initialised (artifact marked random-init)."),
]
# torch.Generator takes seeds up to 2**64 - 1; a larger one would fail deep in the load stage
Seed = Annotated[int, typer.Option("--seed", min=0, max=2**64 - 1,
                                   help="Seed of the random initialisation (without --weights).")]

# ---- the recipe and the fold --------------------------------------------------------------------------------------
Recipe = Annotated[
    Path | None,
    typer.Option("--recipe", show_default=False,
                 help="Recipe TOML (default: the target's shipped recipe). Flags override its values."),
]
Recipes = Annotated[
    list[Path] | None,
    typer.Option("--recipe", show_default=False,
                 help="A recipe TOML for the target it names (repeatable; the others use their shipped recipe)."),
]
NoPass = Annotated[
    list[str] | None,
    typer.Option("--no-pass", show_default=False,
                 help="Switch a fold pass off (repeatable), for diagnosis. Passes (each recipe lists the ones it "
                      f"runs; a pass with nothing to rewrite in a family records no change): {', '.join(PASS_NAMES)}."),
]

# ---- integer precisions: calibration -----------------------------------------------------------------------------
Calibration = Annotated[
    Path | None,
    typer.Option("--calibration", show_default=False,
                 help="Calibration data for --precision int8: a folder of images (any format Pillow reads, "
                      "preprocessed as the package says) or an .npy/.npz array of normalised N x 3 x H x W inputs. "
                      "Without it a synthetic set is used, with a warning, and the package is not deployable."),
]
CalibrationSamples = Annotated[
    int | None,
    typer.Option("--calibration-samples", min=1, show_default=False,
                 help="Calibration inputs the activation ranges are measured on (recipe: quantization.samples; "
                      "quantization.held_out more are kept aside to select and gate)."),
]
CalibrationMethodName = choice("CalibrationMethodName", ("minmax", "percentile", "entropy"))
CalibrationMethod = Annotated[
    CalibrationMethodName | None,
    typer.Option("--calibration-method", show_default=False,
                 help="How activation ranges are taken (recipe: quantization.method)."),
]

# ---- where results go -----------------------------------------------------------------------------------------
Out = Annotated[Path, typer.Option("--out", "-o", help="Output root; a package goes to "
                                                       "OUT/MODEL-VARIANT/TARGET-PRECISION/.")]
BundleDir = Annotated[Path | None, typer.Option("--bundle-dir", show_default=False,
                                                help="Also write each package's reproducible bundle (.zip + "
                                                     ".sha256) here.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing artifact (atomically).")]

# ---- how results are shown ----------------------------------------------------------------------------------------
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on the console.")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]
Profile = Annotated[bool, typer.Option("--profile", help="Report wall time and peak memory (RSS) per pipeline "
                                                         "stage (also under \"profile\" in --json).")]
Threads = Annotated[int, typer.Option("--threads", min=1, help="Runtime threads for the parity re-run.")]

# ---- targets ------------------------------------------------------------------------------------------------------
TargetNames = Annotated[
    list[str] | None,
    typer.Option("--target", "-t", show_default=False,
                 help="A target (repeatable; default: every target)."),
]
DeprecatedTargets = Annotated[
    str | None,
    typer.Option("--targets", hidden=True, show_default=False,
                 help="Deprecated: comma-separated targets; use --target (repeatable)."),
]

# ---- signatures: who must have signed a package ---------------------------------------------------------------------
TrustedKeys = Annotated[
    list[Path] | None,
    typer.Option("--trusted-key", show_default=False,
                 help="A public key (PEM) trusted to sign packages (repeatable): a valid signature from one of them "
                      "is required."),
]
Identity = Annotated[
    str | None,
    typer.Option("--identity", show_default=False,
                 help="Keyless (Sigstore) signatures: the signer identity required (e.g. the workflow's URL or an "
                      "e-mail address); with --issuer."),
]
Issuer = Annotated[
    str | None,
    typer.Option("--issuer", show_default=False,
                 help="Keyless (Sigstore) signatures: the OIDC issuer required (e.g. "
                      "https://token.actions.githubusercontent.com); with --identity."),
]
CertificateChain = Annotated[
    list[Path] | None,
    typer.Option("--certificate-chain", show_default=False,
                 help="Certificate signatures: the chain up to a trusted root (PEM; repeatable): a valid signature by "
                      "a certificate it vouches for is required."),
]
RequireSignature = Annotated[
    bool,
    typer.Option("--require-signature", help="Refuse a package that carries no signature (a present one is always "
                                             "checked)."),
]
