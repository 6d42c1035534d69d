"""The ``efexport`` command line: one module per command, option groups shared (``options``), one export command
per registered target, generated from its TargetSpec (``export``).

Console output (progress, warnings, errors) goes to stderr; ``--json`` prints one JSON document on stdout.
Exit codes: see ``efexport.exporter.errors.ExitCode`` (0 ok, 2 usage, 3 bad input, 4 output, 5 parity, 6 verify,
7 stage failed, 8 TensorRT without an engine, 9 engine required but impossible, 10 publish refused, 11 registry
failed (publish, pull), 12 not in the registry (pull), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 1
internal error).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from efexport.exporter import interrupts
from efexport.exporter.cli.bench import bench_command
from efexport.exporter.cli.bundle import bundle_command
from efexport.exporter.cli.evaluate import evaluate_command
from efexport.exporter.cli.export import all_command, export_command
from efexport.exporter.cli.fold import fold_command
from efexport.exporter.cli.info import targets_command, variants_command
from efexport.exporter.cli.options import EXIT_CODES_HELP
from efexport.exporter.cli.provenance import provenance_command
from efexport.exporter.cli.publish import publish_command
from efexport.exporter.cli.pull import pull_command
from efexport.exporter.cli.sign import sign_command
from efexport.exporter.cli.verify import verify_command
from efexport.exporter.targets import TARGETS

app = typer.Typer(
    name="efexport",
    help="Export EfficientFormer checkpoints to deployable, verified, documented artifacts.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

for _name, _spec in TARGETS.items():
    app.command(_name)(export_command(_spec))
app.command("all")(all_command)
app.command("fold")(fold_command)
app.command("verify")(verify_command)
app.command("provenance")(provenance_command)
app.command("sign")(sign_command)
app.command("bundle")(bundle_command)
app.command("bench")(bench_command)
app.command("evaluate")(evaluate_command)
app.command("variants")(variants_command)
app.command("targets")(targets_command)
app.command("publish")(publish_command)
app.command("pull")(pull_command)


def _keep_torch_caches_out_of_tmp() -> None:
    """torch.export creates an inductor cache folder under TMPDIR, which an interrupted or failed export would
    leave behind; give it the user's cache folder instead (unless the user chose one)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "efexport" / "torchinductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))


def main() -> None:
    _keep_torch_caches_out_of_tmp()
    interrupts.install()  # SIGTERM unwinds like Ctrl-C, so staging directories are removed on the way out
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(interrupts.exit_code()))


__all__ = ["app", "main"]
