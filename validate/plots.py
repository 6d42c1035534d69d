"""PNG plots of an ``efexport bench`` report (schema ``efexport.bench/1``).

Three figures, each written atomically (a temporary file beside the target, then ``os.replace``):

- ``latency.png``: batch-1 latency per backend, one panel per variant (p50 bar, p90 whisker);
- ``throughput.png``: images/s against batch size, one line per (variant, backend); only when a sweep exists;
- ``accuracy.png``: latency against the paper's published ImageNet top-1. Accuracy is never measured here (the
  benched weights may be random-init): every point's top-1 is the published figure, and the paper's own latency
  (a phone, Core ML) is drawn as a separate, visibly different series labelled "published".

Rendering uses ``matplotlib.figure.Figure`` with the Agg canvas directly, so pyplot's global backend and figure
registry are never touched.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from efexport.exporter.output import write_atomically

DPI = 120
WIDTH_IN = 9.0
NOT_CONVERGED = "(not converged)"
NOT_CONVERGED_HATCH = "///"
DEFAULT_BACKEND = "onnxruntime-folded"
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_CAPTION_WIDTH = 100  # characters per caption line before wrapping


# ----------------------------------------------------------------------------------------------- report access


def _variants(report: dict) -> list[dict]:
    return list(report.get("variants") or [])


def _stats(latency: dict | None) -> dict | None:
    """The ``stats_ms`` of a latency dict, or None when nothing was measured."""
    if not isinstance(latency, dict):
        return None
    stats = latency.get("stats_ms")
    if not isinstance(stats, dict) or stats.get("p50") is None:
        return None
    return stats


def _measured_backends(variant: dict) -> list[dict]:
    """The variant's batch-1 backend entries that carry latency statistics, in run order."""
    return [b for b in variant.get("backends") or [] if _stats(b.get("latency")) is not None]


def _converged(backend: dict) -> bool:
    """False only when the measurement says it did not converge; an absent ``method`` is not flagged."""
    method = (backend.get("latency") or {}).get("method") or {}
    return method.get("converged", True) is not False


def _cpu(report: dict) -> str:
    device = report.get("device") or {}
    return str(device.get("cpu") or device.get("name") or device.get("kind") or "unknown device").strip()


def _host(report: dict) -> str:
    """``<cpu>, <n> threads``: where the numbers in this report were measured."""
    threads = report.get("threads")
    if threads is None:
        return _cpu(report)
    return f"{_cpu(report)}, {threads} thread{'s' if threads != 1 else ''}"


def _measured_kind(report: dict) -> str:
    kinds = {(b.get("latency") or {}).get("measured") for v in _variants(report) for b in _measured_backends(v)}
    kinds.discard(None)
    if kinds == {"device_compute"}:
        return "device compute"
    return "host end-to-end"


def _backend_colors(report: dict) -> dict[str, str]:
    """One colour per backend name, the same in every figure of the report (first-seen order)."""
    names: list[str] = []
    for variant in _variants(report):
        for name in [b.get("name") for b in variant.get("backends") or []] + [
            t.get("backend") for t in variant.get("throughput") or []
        ]:
            if name and name not in names:
                names.append(name)
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, _CAPTION_WIDTH)) or text


# ------------------------------------------------------------------------------------------------- rendering


def _figure(height_in: float, width_in: float = WIDTH_IN) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Render ``figure`` as PNG into ``path`` atomically (readers never see half a plot)."""
    return write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=DPI))


def _titles(figure: Figure, title: str, subtitle: str) -> None:
    figure.suptitle(title + "\n" + "\n".join(_wrap(line) for line in subtitle.split("\n")), fontsize=10.5)


# ---------------------------------------------------------------------------------------------------- latency


def _latency_figure(report: dict) -> Figure:
    variants = [v for v in _variants(report) if _measured_backends(v)]
    if not variants:
        raise ValueError("no batch-1 latency in this report")
    colors = _backend_colors(report)
    rows = [len(_measured_backends(v)) for v in variants]
    height = max(4.5, 1.9 + sum(0.9 + 0.36 * n for n in rows))
    figure = _figure(height)
    axes = figure.subplots(len(variants), 1, squeeze=False, height_ratios=[0.9 + 0.36 * n for n in rows])[:, 0]
    any_unconverged = False
    for ax, variant in zip(axes, variants, strict=True):
        any_unconverged |= _latency_panel(ax, variant, colors)
    subtitle = f"{_host(report)} · {_measured_kind(report)}, batch 1"
    not_measured = _not_measured(variants)
    if not_measured:
        subtitle += "\n" + _wrap("Not measured here: " + "; ".join(not_measured))
    _titles(figure, "Batch-1 latency per backend (lower is better)", subtitle)

    handles: list = [Patch(facecolor="#9aa5b1", edgecolor="black", linewidth=0.6, label="p50 (bar)"),
                     Line2D([], [], color="black", marker="|", markersize=10, linewidth=1.2, label="p90 (whisker)")]
    if any_unconverged:
        handles.append(Patch(facecolor="white", edgecolor="#555555", hatch=NOT_CONVERGED_HATCH,
                             label=f"timing {NOT_CONVERGED.strip('()')} (hatched)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    return figure


def _not_measured(variants: Iterable[dict]) -> list[str]:
    seen: dict[str, str] = {}
    for variant in variants:
        for name, reason in (variant.get("not_measured") or {}).items():
            seen.setdefault(name, str(reason))
    return [f"{name} ({reason})" for name, reason in seen.items()]


def _latency_panel(ax: Axes, variant: dict, colors: dict[str, str]) -> bool:
    """Horizontal bars of one variant's backends; True when any of them did not converge."""
    backends = _measured_backends(variant)
    positions = list(range(len(backends)))
    labels: list[str] = []
    p90_max = 0.0
    any_unconverged = False
    for y, backend in zip(positions, backends, strict=True):
        stats = _stats(backend["latency"])
        assert stats is not None
        p50 = float(stats["p50"])
        p90 = float(stats.get("p90") or p50)
        p90_max = max(p90_max, p90, p50)
        converged = _converged(backend)
        any_unconverged |= not converged
        name = str(backend.get("name", "?"))
        labels.append(name if converged else f"{name}\n{NOT_CONVERGED}")
        ax.barh(y, p50, height=0.62, color=colors.get(name, _PALETTE[0]), edgecolor="black", linewidth=0.6,
                hatch=None if converged else NOT_CONVERGED_HATCH, alpha=0.85 if converged else 0.45, zorder=2)
        ax.errorbar(p50, y, xerr=[[0.0], [max(p90 - p50, 0.0)]], fmt="none", ecolor="black", elinewidth=1.2,
                    capsize=4, zorder=3)
        ax.annotate(_ms(p50), xy=(max(p90, p50), y), xytext=(6, 0), textcoords="offset points", va="center",
                    ha="left", fontsize=9)
    ax.set_yticks(positions, labels=labels, fontsize=9)
    ax.invert_yaxis()  # run order, top to bottom
    ax.set_xlim(0, p90_max * 1.2 if p90_max > 0 else 1.0)
    ax.set_xlabel("latency (ms)", fontsize=9)
    ax.set_title(_variant_title(variant), fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3, zorder=0)
    ax.tick_params(axis="x", labelsize=8)
    return any_unconverged


def _variant_title(variant: dict) -> str:
    name = str(variant.get("variant", "?"))
    gmacs = (variant.get("cost") or {}).get("gmacs") or (variant.get("published") or {}).get("gmacs")
    return f"{name} ({gmacs:.2f} GMACs)" if isinstance(gmacs, (int, float)) else name


def latency_plot(report: dict, path: Path) -> Path:
    """Batch-1 latency of every backend of every variant (p50 bar, p90 whisker) as a PNG at ``path``."""
    return _save(_latency_figure(report), Path(path))


# ------------------------------------------------------------------------------------------------- throughput


def _images_per_second(entry: dict) -> float | None:
    value = entry.get("images_per_second")
    if value is None:
        value = (entry.get("latency") or {}).get("images_per_second")
    return float(value) if isinstance(value, (int, float)) else None


def _sweep(report: dict) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(variant, backend) -> [(batch size, images/s)] sorted by batch size, in first-seen order."""
    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for variant in _variants(report):
        for entry in variant.get("throughput") or []:
            ips = _images_per_second(entry)
            batch = entry.get("batch_size")
            if ips is None or not isinstance(batch, int) or batch < 1:
                continue
            key = (str(variant.get("variant", "?")), str(entry.get("backend", "?")))
            lines.setdefault(key, []).append((batch, ips))
    return {key: sorted(points) for key, points in lines.items()}


def _throughput_figure(report: dict) -> Figure:
    lines = _sweep(report)
    if not lines:
        raise ValueError("no batch sweep in this report")
    colors = _backend_colors(report)
    variant_names = list(dict.fromkeys(variant for variant, _ in lines))
    markers = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(variant_names)}
    styles = {name: ["-", "--", ":", "-."][i % 4] for i, name in enumerate(variant_names)}
    figure = _figure(max(5.0, 1.6 + 0.2 * len(lines)))  # tall enough for the legend's one row per line
    ax = figure.subplots()
    batches = sorted({b for points in lines.values() for b, _ in points})
    for (variant, backend), points in lines.items():
        xs = [b for b, _ in points]
        ys = [ips for _, ips in points]
        ax.plot(xs, ys, marker=markers[variant], linestyle=styles[variant], color=colors.get(backend, _PALETTE[0]),
                linewidth=1.6, markersize=6, label=f"{variant} · {backend}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, labels=[str(b) for b in batches])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 1.5, batches[0] * 1.5)
    else:
        ax.set_xlim(batches[0] / 1.25, batches[-1] * 1.25)
    ax.set_ylim(bottom=0, top=max(ips for points in lines.values() for _, ips in points) * 1.12)
    ax.set_xlabel("batch size (images per call, log2 scale)")
    ax.set_ylabel("throughput (images/s = batch size / mean latency)")
    ax.grid(alpha=0.3)
    ax.legend(title="variant · backend", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              title_fontsize=9, frameon=False)
    _titles(figure, "Throughput against batch size (higher is better)",
            f"{_host(report)} · {_measured_kind(report)}, one call per batch")
    return figure


def throughput_plot(report: dict, path: Path) -> Path:
    """Images/s against batch size, one line per (variant, backend), as a PNG at ``path``.

    Raises ValueError when no variant has a batch sweep.
    """
    return _save(_throughput_figure(report), Path(path))


# --------------------------------------------------------------------------------------------------- accuracy


def _top1(published: dict | None) -> float | None:
    value = (published or {}).get("imagenet_top1_percent")
    return float(value) if isinstance(value, (int, float)) else None


def _published_latency(published: dict | None) -> tuple[float, str] | None:
    """(ms, "device (runtime)") of a published entry, or None."""
    latency = (published or {}).get("latency_ms") or {}
    value = latency.get("value")
    if not isinstance(value, (int, float)):
        return None
    where = str(latency.get("device") or "unknown device")
    runtime = latency.get("runtime")
    if runtime:
        where += f" ({str(runtime).split(',')[0].strip()})"
    return float(value), where


def _measured_points(report: dict, backend: str) -> tuple[list[tuple[str, float, float, str]], list[str]]:
    """[(variant, p50 ms, top-1 %, backend used)] and the notes for variants that fell back to another backend."""
    points: list[tuple[str, float, float, str]] = []
    fallbacks: list[str] = []
    for variant in _variants(report):
        top1 = _top1(variant.get("published"))
        measured = _measured_backends(variant)
        if top1 is None or not measured:
            continue
        p50 = {id(b): float(b["latency"]["stats_ms"]["p50"]) for b in measured}
        chosen = next((b for b in measured if b.get("name") == backend), None)
        name = str(variant.get("variant", "?"))
        if chosen is None:
            chosen = min(measured, key=lambda b: p50[id(b)])
            fallbacks.append(f"{name}: {chosen.get('name')}")
        points.append((name, p50[id(chosen)], top1, str(chosen.get("name"))))
    return points, fallbacks


def _published_points(report: dict, published_table: dict[str, dict] | None) -> list[tuple[str, float, float, str]]:
    """[(variant, published ms, top-1 %, "device (runtime)")]: the report's variants, then the table's others."""
    entries: dict[str, dict] = {}
    for variant in _variants(report):
        if variant.get("published"):
            entries[str(variant.get("variant", "?"))] = variant["published"]
    for name, published in (published_table or {}).items():
        entries.setdefault(str(name), published)
    points = []
    for name, published in entries.items():
        top1, latency = _top1(published), _published_latency(published)
        if top1 is not None and latency is not None:
            points.append((name, latency[0], top1, latency[1]))
    return points


def _measured_label(report: dict, backend: str, points: list, fallbacks: list[str]) -> str:
    used = list(dict.fromkeys(p[3] for p in points))
    if not fallbacks:
        what = backend
    elif len(fallbacks) == len(points) and len(used) == 1:
        what = f"{used[0]} (fastest measured; {backend} not measured)"
    else:
        what = f"{backend}; fastest measured where absent ({', '.join(fallbacks)})"
    return f"measured here: {what}, {_host(report)}"


def _accuracy_figure(report: dict, backend: str = DEFAULT_BACKEND,
                     published_table: dict[str, dict] | None = None) -> Figure:
    measured, fallbacks = _measured_points(report, backend)
    published = _published_points(report, published_table)
    if not measured and not published:
        raise ValueError("no variant with a published top-1 and a latency in this report")
    figure = _figure(5.5)
    ax = figure.subplots()
    if published:
        where = ", ".join(dict.fromkeys(p[3] for p in published))
        _series(ax, sorted(published, key=lambda p: p[1]), color="#555555", marker="o", linestyle="--",
                hollow=True, label=f"published: {where}, not measured here")
    if measured:
        _series(ax, sorted(measured, key=lambda p: p[1]), color="#1f77b4", marker="s", linestyle="-", hollow=False,
                label=_wrap(_measured_label(report, backend, measured, fallbacks)))
    xs = [p[1] for p in measured + published]
    ys = [p[2] for p in measured + published]
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.9)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    span = max(max(ys) - min(ys), 1.0)
    ax.set_ylim(min(ys) - 0.25 * span, max(ys) + 0.3 * span)
    ax.set_xlabel("latency per image, batch 1 (ms, log scale)")
    ax.set_ylabel("ImageNet-1k top-1 (%), published")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    _titles(figure, "Published ImageNet top-1 against latency",
            "Top-1 is the paper's published figure for every point; the weights benched here may be random-init, "
            "so accuracy is never measured")
    return figure


def _series(ax: Axes, points: list[tuple[str, float, float, str]], *, color: str, marker: str, linestyle: str,
            hollow: bool, label: str) -> None:
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    ax.plot(xs, ys, linestyle=linestyle, color=color, linewidth=1.4, marker=marker, markersize=8,
            markerfacecolor="white" if hollow else color, markeredgecolor=color, markeredgewidth=1.6, label=label,
            zorder=3)
    for name, x, y, _ in points:
        ax.annotate(f"{name}\n{_ms(x)}", xy=(x, y), xytext=(8, -4), textcoords="offset points", ha="left",
                    va="top", fontsize=8, color=color)


def accuracy_plot(report: dict, path: Path, backend: str = DEFAULT_BACKEND,
                  published_table: dict[str, dict] | None = None) -> Path:
    """Latency (measured here, and the paper's published phone latency) against published top-1, as a PNG.

    ``backend``: whose batch-1 p50 is the measured point of each variant; a variant without it uses its fastest
    measured backend, and the legend says so. ``published_table`` (variant -> published dict) adds the published
    points of variants that were not benched.
    """
    return _save(_accuracy_figure(report, backend, published_table), Path(path))


# -------------------------------------------------------------------------------------------------- quantized


def _quantized(report: dict) -> list[tuple[str, dict]]:
    return [(v["variant"], q) for v in _variants(report) for q in v.get("quantized") or []]


def _quantization_figure(report: dict) -> Figure:
    entries = _quantized(report)
    if not entries:
        raise ValueError("no integer package in this report")
    figure = _figure(4.8)
    ax = figure.subplots()
    for index, (variant, entry) in enumerate(entries):
        color, marker = _PALETTE[index % len(_PALETTE)], _MARKERS[index % len(_MARKERS)]
        points = sorted((c["speedup"], c["min_cosine"], len(c["float_groups"]), c["passed"])
                        for c in entry["tradeoff"] if c.get("speedup"))
        ax.plot([p[0] for p in points], [p[1] for p in points], color=color, marker=marker, linestyle="none",
                alpha=0.55, label=f"{variant} {entry['precision']}: candidates (groups in float)")
        for speed, cosine, kept, _ in points:
            ax.annotate(str(kept), (speed, cosine), textcoords="offset points", xytext=(4, 3), fontsize=7,
                        color=color)
        measured = entry.get("measured_speedup_over_float_onnx")
        if measured:
            ax.plot([measured], [entry["gate"]["min_cosine"]], color=color, marker=marker, markersize=11,
                    markeredgecolor="black", linestyle="none",
                    label=f"{variant} shipped: {len(entry['float_groups'])}/{entry['groups']} groups float, "
                          f"{measured:.2f}x, top-1 {entry['gate']['top1_agreement'] * 100:.0f}% (gate inputs)")
        ax.axhline(entry["gate"]["required_min_cosine"], color=color, linestyle=":", linewidth=1)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("speed against the float model (x, batch 1, interleaved; > 1 is faster)")
    ax.set_ylabel("min logits cosine vs float")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    _titles(figure, "Integer quantization: error against speed",
            f"{_cpu(report)}. Small markers: every candidate the quantize stage tried (selection inputs; the "
            "number is how many node groups stayed float). Large: the shipped package, its gate inputs' min cosine "
            "and the speed bench measured against efexport's float ONNX in this run. Dotted: the gate.")
    return figure


def quantization_plot(report: dict, path: Path) -> Path:
    """quantization.png: each integer package's error/speed trade-off (bench reports with integer packages)."""
    return _save(_quantization_figure(report), Path(path))


# ------------------------------------------------------------------------------------------------------- all


def write_plots(report: dict, out_dir: Path, published_table: dict | None = None) -> dict[str, Path]:
    """latency.png, accuracy.png, throughput.png (only when the report has a batch sweep) and quantization.png
    (only when it has integer packages) in ``out_dir``."""
    out_dir = Path(out_dir)
    written = {
        "latency": latency_plot(report, out_dir / "latency.png"),
        "accuracy": accuracy_plot(report, out_dir / "accuracy.png", published_table=published_table),
    }
    if _sweep(report):
        written["throughput"] = throughput_plot(report, out_dir / "throughput.png")
    if _quantized(report):
        written["quantization"] = quantization_plot(report, out_dir / "quantization.png")
    return written
