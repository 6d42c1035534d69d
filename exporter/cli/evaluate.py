"""``efexport evaluate``: top-1 / top-5 accuracy of a package on labelled images, artifact beside PyTorch."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

import efexport.exporter.cli.options as options
from efexport.exporter.cli.console import run_guarded, stderr

if TYPE_CHECKING:
    from efexport.exporter.evaluate import Accuracy, EvaluationReport


@contextmanager
def _progress_bar(console: Console | None) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (none without a console: --quiet, --json), as the ``progress`` callback."""
    if console is None:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("evaluate", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _line(what: str, accuracy: Accuracy) -> str:
    return (f"  {what}: top-1 {accuracy.top1:.2%} ({accuracy.top1_correct}/{accuracy.images}), "
            f"top-5 {accuracy.top5:.2%} ({accuracy.top5_correct}/{accuracy.images})")


def _summary(console: Console, report: EvaluationReport) -> None:
    """A few lines on stderr: the artifact's accuracy on its runtime, PyTorch's, and their agreement."""

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    runtime = report.runtime
    say(f"[green]evaluated[/] {escape(report.package)} on {report.images} images of {report.classes} classes "
        f"({escape(report.images_dir)})")
    say(escape(_line(f"{runtime['backend']} {runtime['version']}", report.artifact)))
    if report.pytorch is None:
        return
    weights = report.pytorch_weights or {}
    random_init = weights.get("source") == "random-init"
    source = f"random-init, seed {weights.get('seed')}" if random_init else f"checkpoint {weights.get('file')}"
    say(escape(_line(f"pytorch ({source})", report.pytorch)))
    say(f"  top-1 agreement: {report.agreement:.2%} ({report.top1_agreement}/{report.images})")
    if random_init:
        say("[yellow]note:[/] random-init weights: accuracy on real images is chance level; the agreement is what "
            "this run shows")


def evaluate_command(
    package: Annotated[Path, typer.Argument(help="A package directory (the one holding manifest.json) or its bundle "
                                                 "(.zip).")],
    images: Annotated[Path, typer.Option("--images", help="Labelled images: one subfolder per class (named by "
                                                          "class index, class name or ImageNet WordNet id), or a "
                                                          "flat folder with --labels.")],
    labels: Annotated[Path | None, typer.Option("--labels", show_default=False,
                                                help="CSV or TSV of 'filename,label' lines (label: class index or "
                                                     "name; file names relative to --images).")] = None,
    class_names: Annotated[Path | None, typer.Option("--class-names", show_default=False,
                                                     help="Class labels, one per line, to match names against "
                                                          "(default: the package's, ImageNet-1k).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", "-w", show_default=False,
                                                 help="The checkpoint the package was exported from (its sha256 "
                                                      "must be the manifest's), for the PyTorch column.")] = None,
    no_pytorch: Annotated[bool, typer.Option("--no-pytorch", help="Leave out the PyTorch column.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, show_default=False,
                                              help="Only the first N images, in sorted path order.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads of the artifact's runtime and of "
                                                                  "PyTorch.")] = 2,
    batch: Annotated[int, typer.Option("--batch", min=1, max=1024, help="Images per batch (rounded up to a "
                                                                        "multiple of a static batch).")] = 16,
    quiet: options.Quiet = False,
    as_json: options.Json = False,
) -> None:
    """Top-1 / top-5 accuracy of a package's model on labelled images, on the artifact's own runtime (the target's
    parity runner), beside the PyTorch model it was exported from on the same preprocessed inputs, and how often
    the two agree. The package's files are checked against its manifest first."""
    from efexport.exporter.evaluate import EvaluateRequest, evaluate_package

    request = EvaluateRequest(package=package, images=images, labels_file=labels, class_names=class_names,
                              weights=weights, pytorch=not no_pytorch, limit=limit, threads=threads, batch=batch)
    console = stderr(quiet)
    with _progress_bar(None if as_json else console) as progress:
        report = run_guarded(as_json, lambda: evaluate_package(request, progress))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    elif console:
        _summary(console, report)
