"""README.md of a package: its model card, written from the manifest alone.

``model_card`` is a pure function of the manifest (the typed ``Manifest`` of exporter.manifest_model, or its JSON
validated into one): the same manifest always gives the same text, with no dates and
nothing read from the machine. Every number in the card is one the manifest records; the paper's figures are
labelled as published, not measured. The card never lists itself in its file table: it cannot hold its own hash.

The card is a Jinja2 template. ``exporter/targets/card.md.j2`` holds the structure every package shares and
names, as blocks, what a target has to say for itself (its name, what the package is, usage, which runtime ran
the parity gate, its limitations...); each target's ``exporter/targets/<format>/card.md.j2`` (loaded as
``<format>.md.j2``) extends that base and fills the blocks for the target whose ``manifest.target.format``
is ``<format>``. Templates get the manifest's typed blocks (attributes; an open block's other keys are in its
``model_extra``). A new target adds its card by adding its template beside its code: this module knows no format.
A format with no template of its own gets the base template's generic wording.

This module registers, in ``_environment``, the filters and globals the templates share: the formatting helpers
(how a measured value, a cosine, a latency, a shape, a table cell are written) and the few pieces too fiddly for
a template (the tables of measured figures, the Python preprocessing snippet).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.resources.abc import Traversable
from typing import Any

import jinja2

from efexport.exporter.manifest_model import (
    FileEntry,
    LatencyDevice,
    LatencyEntry,
    Manifest,
    ParityReport,
    TensorSpec,
    ToolVersions,
)

CARD_FILE = "README.md"
PUBLISHED_LABEL = "published (paper), not measured here"

BASE_TEMPLATE = "card.md.j2"
TEMPLATE_SUFFIX = ".md.j2"
# Found through efexport.exporter's package data (importlib.resources) without importing any target module.
_TARGETS_FOLDER = "targets"
_TARGET_CARD = "card.md.j2"  # the file name of a target's card template inside its folder

_MEASURED = {"host_end_to_end": "host end-to-end", "device_compute": "device compute"}


# ---- formatting (filters) ----------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """Text for one Markdown table cell: ``|`` escaped, line breaks folded."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _row(*cells: object) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the header, its rule, then one row per entry of ``rows``."""
    lines = [_row(*header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [_row(*row) for row in rows]
    return "\n".join(lines)


def _code(text: object) -> str:
    """Inline code; double backticks when the text holds one."""
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _sig(x: object, digits: int = 3) -> str:
    """A measured value: ints as they are, floats to ``digits`` significant digits (3.2e-06, 0.0332, 19.7)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def _plain(x: object) -> str:
    """A configured value (tolerance, mean, std): its shortest exact form (0.99999, 0.0001, 0.485)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x)) if x != 0 else "0"
    return "n/a" if x is None else str(x)


def _cosine(x: object) -> str:
    """A cosine close to 1 with the digits that show how close (0.9999781, 0.9999999999981)."""
    if not isinstance(x, float) or not math.isfinite(x):
        return _sig(x)
    gap = 1.0 - x
    if x == 1.0 or gap <= 0:
        return f"{x:.15g}"
    if gap < 1e-3:
        return f"{x:.{math.ceil(-math.log10(gap)) + 1}f}"
    return f"{x:.7g}"


def _ms(x: object) -> str:
    """Milliseconds: two decimals from 0.1 ms up, three significant digits below."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return _sig(x)
    return f"{x:.2f} ms" if x >= 0.1 else f"{x:.3g} ms"


def _rate(x: object) -> str:
    """Images per second: whole numbers from 100 up (67,368), three digits below (50.2)."""
    if isinstance(x, float) and math.isfinite(x) and x >= 100:
        return f"{x:,.0f}"
    return _sig(x)


def _shape(shape: Sequence[object]) -> str:
    """A tensor shape as a tuple: (1, 3, 224, 224), (batch, 1000)."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _plural(n: int, word: str) -> str:
    """``n`` and ``word``, with an s unless ``n`` is 1."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def _thousands(n: int) -> str:
    """An integer with thousands separators (12,345,678)."""
    return f"{n:,}"


def _q(text: object) -> str:
    """A Python string literal, double-quoted."""
    return json.dumps(str(text))


# ---- pieces too fiddly for a template (globals) ---------------------------------------------------------------


def _dynamic_axes(specs: Sequence[TensorSpec]) -> list[str]:
    """The named (dynamic) axes of these inputs/outputs, sorted."""
    return sorted({d for spec in specs for d in spec.shape if isinstance(d, str)})


def _device_summary(block: LatencyDevice) -> str:
    """One line naming the machine a latency entry was measured on (its facts beyond ``kind`` are the fingerprint's
    own keys: an open block)."""
    device = block.as_json()
    kind = block.kind
    if kind == "cpu":
        extras = [device.get("arch"), f"{device['logical_cores']} logical cores" if device.get("logical_cores")
                  else None, device.get("os")]
        rest = ", ".join(str(e) for e in extras if e)
        return f"{device.get('cpu', 'CPU')}" + (f" ({rest})" if rest else "")
    if kind == "gpu":
        extras = [f"compute capability {device['compute_capability']}" if device.get("compute_capability") else None,
                  f"driver {device['driver']}" if device.get("driver") else None,
                  f"CUDA {device['cuda_runtime']}" if device.get("cuda_runtime") else None]
        rest = ", ".join(e for e in extras if e)
        return f"{device.get('name', 'GPU')}" + (f" ({rest})" if rest else "")
    shown = ", ".join(f"{k}: {v}" for k, v in device.items() if not isinstance(v, (dict, list)))
    return shown or "not recorded"


_RESAMPLING = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS",
               "box": "BOX", "hamming": "HAMMING"}


def _python_preprocess(manifest: Manifest, normalise: bool) -> list[str]:
    """Python (numpy, PIL) for the recorded preprocessing: ``crop(path)``, and ``preprocess(path)`` when
    ``normalise``; module-level imports are added by ``_python``."""
    pre = manifest.preprocessing
    size, shorter = pre.center_crop, pre.resize_shorter_side
    resampling = _RESAMPLING.get(pre.interpolation.lower(), "BICUBIC")
    lines: list[str] = []
    if normalise:
        dtype = manifest.inputs[0].dtype
        shape = "(3, 1, 1)" if pre.layout == "NCHW" else "(1, 1, 3)"
        lines += [f"MEAN = np.array([{', '.join(_plain(v) for v in pre.mean)}], dtype=np.{dtype}).reshape{shape}",
                  f"STD = np.array([{', '.join(_plain(v) for v in pre.std)}], dtype=np.{dtype}).reshape{shape}",
                  "", ""]
    lines += [
        "def crop(path: str) -> Image.Image:",
        '    image = Image.open(path).convert("RGB")',
        f"    scale = {shorter} / min(image.size)",
        "    image = image.resize((round(image.width * scale), round(image.height * scale)), "
        f"Image.Resampling.{resampling})",
        f"    left, top = (image.width - {size}) // 2, (image.height - {size}) // 2",
        f"    return image.crop((left, top, left + {size}, top + {size}))",
    ]
    if normalise:
        dtype = manifest.inputs[0].dtype
        pixels = f"np.asarray(crop(path), dtype=np.{dtype})"
        if pre.color_order == "BGR":
            pixels += "[..., ::-1]"
        if pre.layout == "NCHW":
            pixels += ".transpose(2, 0, 1)"
        shape = _shape([1, *manifest.inputs[0].shape[1:]])
        lines += [
            "",
            "",
            "def preprocess(path: str) -> np.ndarray:",
            f"    x = {pixels} / 255.0",
            f"    return ((x - MEAN) / STD)[None]  # {shape}, {pre.layout}",
        ]
    return lines


def _lines(code: str | Sequence[str]) -> list[str]:
    """Lines of code given as one text (a template's ``{% set %}`` block) or already as a list."""
    return code.splitlines() if isinstance(code, str) else list(code)


def _python(imports: str | Sequence[str], preprocess: Sequence[str], main: str | Sequence[str] = ()) -> str:
    """A fenced Python snippet: imports, the preprocessing functions, then the target's own calls (PEP 8's two
    blank lines between the parts)."""
    parts = [*_lines(imports), "", "", *preprocess, "", "", *_lines(main)]
    return "```python\n" + "\n".join(parts).rstrip() + "\n```"


def _parity_table(parity: ParityReport) -> str:
    """The parity block's figures beside their gates."""
    tol = parity.tolerances
    n = len(parity.per_input)
    agreeing = round(parity.top1_agreement * n)
    rows = [
        ("max abs error (logits)", _sig(parity.max_abs),
         f"≤ {_plain(tol.max_abs)}" if tol.max_abs is not None else "reported, not gated"),
        ("mean abs error", _sig(parity.mean_abs), "—"),
        ("max relative error", _sig(parity.max_rel), "—"),
        ("min cosine similarity", _cosine(parity.min_cosine), f"≥ {_plain(tol.min_cosine)} on every input"),
        ("top-1 agreement", f"{agreeing}/{n} inputs ({parity.top1_agreement * 100:.3g}%)",
         "same top-1 class on every input (a tie within the measured error counts)" if tol.top1_agreement
         else f"≥ {tol.min_top1_agreement * 100:.3g}% of inputs (a tie counts)" if tol.min_top1_agreement
         else "reported, not gated"),
        ("top-1 ties", str(parity.top1_ties),
         "allowed: the reference scores the exported top-1 class within the measured error"),
        ("mean top-5 overlap", f"{_sig(parity.mean_top5_overlap)} of 5", "—"),
    ]
    return _table(("check", "measured", "gate"), rows)


def _runtime_parity_table(runtime_parity: Mapping[str, ParityReport]) -> str:
    """One row per deployment runtime that ran the reference inputs (``runtime_parity``)."""
    rows = []
    for backend, report in runtime_parity.items():
        n = len(report.per_input)
        tol = report.tolerances
        gate = (f"max abs ≤ {_plain(tol.max_abs)}, " if tol.max_abs is not None else "") + \
            f"cosine ≥ {_plain(tol.min_cosine)}"
        rows.append((_code(backend), _sig(report.max_abs), _cosine(report.min_cosine),
                     f"{round(report.top1_agreement * n)}/{n}", gate, "passed" if report.passed else "FAILED"))
    return _table(("runtime", "max abs", "min cosine", "top-1 agree", "gate", "result"), rows)


def _latency_table(entries: Sequence[LatencyEntry]) -> str:
    """One row per latency entry, with the machine it was measured on."""
    rows = []
    for e in entries:
        stats = e.stats_ms
        threads = e.compute_units or ("runtime's own" if e.threads is None else str(e.threads))
        method = e.method
        runs = f"{e.warmup_runs} + {e.timed_runs} ({method.windows} windows"
        runs += ", not converged)" if method.converged is False else ")"
        noise = "one run" if e.noise is None else f"{e.noise:.1%}"
        rows.append((f"{e.backend} {e.runtime_version}", _MEASURED.get(e.measured, e.measured),
                     e.batch_size, e.precision, threads, _ms(stats.p50), _ms(stats.p90),
                     _ms(stats.p99), _ms(stats.mean), _rate(e.images_per_second), noise, runs,
                     _device_summary(e.device)))
    return _table(("runtime", "measured", "batch", "precision", "threads / compute units", "p50", "p90", "p99",
                   "mean", "images/s", "noise", "warm-up + timed runs", "device"), rows)


def _files_table(files: Mapping[str, FileEntry]) -> str:
    """Every file of the package but the card itself, with its size and sha256."""
    rows = [(_code(name), f"{entry.bytes:,}", _code(entry.sha256))
            for name, entry in files.items() if name != CARD_FILE]
    return _table(("file", "bytes", "sha256"), rows)


def _versions_table(versions: ToolVersions) -> str:
    """The tool versions (efexport's, then each tracked package's, in the manifest's order), efexport's git commit
    named as such."""
    rows = []
    for tool, version in versions.as_json().items():
        if tool == "efexport_git_commit":
            rows.append(("efexport git commit", _code(version) if version else "not recorded (not a git checkout)"))
        else:
            rows.append((tool, version))
    return _table(("tool", "version"), rows)


# ---- the templates --------------------------------------------------------------------------------------------


def _targets_folder() -> Traversable:
    """exporter/targets/, as package data of efexport.exporter."""
    return importlib.resources.files(__package__ or "efexport.exporter").joinpath(_TARGETS_FOLDER)


def _card_template(name: str) -> Traversable | None:
    """The card template called ``name``: ``card.md.j2`` (the base) or ``<format>.md.j2`` (that target's
    ``card.md.j2``), or None when there is none. Plain names only: no folders."""
    if "/" in name or "\\" in name or name in ("", ".", "..") or not name.endswith(TEMPLATE_SUFFIX):
        return None
    if name == BASE_TEMPLATE:
        resource = _targets_folder().joinpath(BASE_TEMPLATE)
    else:
        resource = _targets_folder().joinpath(name.removesuffix(TEMPLATE_SUFFIX), _TARGET_CARD)
    return resource if resource.is_file() else None


class _CardLoader(jinja2.BaseLoader):
    """Loads card templates from the package's data (importlib.resources: works from a wheel or a checkout)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        """The template's text; a template that is not there is ``TemplateNotFound``."""
        resource = _card_template(template)
        if resource is None:
            raise jinja2.TemplateNotFound(template)
        return resource.read_text(encoding="utf-8"), None, lambda: True  # package data does not change in a run

    def list_templates(self) -> list[str]:
        """Every card template's name."""
        targets = [entry.name + TEMPLATE_SUFFIX for entry in _targets_folder().iterdir()
                   if entry.is_dir() and entry.joinpath(_TARGET_CARD).is_file()]
        return sorted([BASE_TEMPLATE, *targets])


_FILTERS: dict[str, Callable[..., str]] = {
    "cell": _cell, "code": _code, "cosine": _cosine, "ms": _ms, "plain": _plain, "plural": _plural, "q": _q,
    "rate": _rate, "shape": _shape, "sig": _sig, "thousands": _thousands,
}
_GLOBALS: dict[str, object] = {
    "CARD_FILE": CARD_FILE, "PUBLISHED_LABEL": PUBLISHED_LABEL, "dynamic_axes": _dynamic_axes,
    "files_table": _files_table, "latency_table": _latency_table, "parity_table": _parity_table,
    "python": _python, "python_preprocess": _python_preprocess, "runtime_parity_table": _runtime_parity_table,
    "table": _table, "versions_table": _versions_table,
}


@functools.cache
def _environment() -> jinja2.Environment:
    """The one Jinja2 environment of the cards, with every filter and global the templates use."""
    env = jinja2.Environment(
        loader=_CardLoader(),
        autoescape=False,  # Markdown, not HTML: a manifest's text goes in as it is
        undefined=jinja2.StrictUndefined,  # a misspelt or missing field fails loudly instead of printing nothing
        trim_blocks=True, lstrip_blocks=True,  # a line holding only a {% tag %} leaves nothing in the card
        keep_trailing_newline=True,
        extensions=["jinja2.ext.do"],  # {% do rows.append(...) %} builds a table's rows
    )
    env.filters.update(_FILTERS)
    env.globals.update(_GLOBALS)
    return env


def template_name(fmt: str) -> str:
    """The card template of a target format: ``<format>.md.j2``, or the base template when there is none."""
    name = f"{fmt}{TEMPLATE_SUFFIX}"
    return name if _card_template(name) is not None else BASE_TEMPLATE


def model_card(manifest: Manifest | Mapping[str, Any]) -> str:
    """The package's README.md (Markdown) from its efexport.manifest/3 manifest (typed, or JSON data validated here:
    pydantic's ValidationError if it is not one): same manifest, same text."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.model_validate(manifest)
    target = manifest.target
    template = _environment().get_template(template_name(target.format))
    text = template.render(
        manifest=manifest, model=manifest.model, target=target, package=manifest.package,
        weights=manifest.weights, pre=manifest.preprocessing, inputs=manifest.inputs,
        outputs=manifest.outputs, parity=manifest.parity, versions=manifest.versions,
        model_file=target.model_file, input_name=manifest.inputs[0].name,
        output_names=[spec.name for spec in manifest.outputs],
    )
    return text.rstrip("\n") + "\n"  # exactly one final newline, whatever the last block left


__all__ = ["BASE_TEMPLATE", "CARD_FILE", "PUBLISHED_LABEL", "model_card", "template_name"]
