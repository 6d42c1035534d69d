"""validate.plots: real Agg rendering of a hand-built bench report (synthetic numbers: the plots are tested here)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from matplotlib.text import Annotation
from PIL import Image

from efexport.validate.plots import (
    NOT_CONVERGED,
    _accuracy_figure,
    _latency_figure,
    _throughput_figure,
    accuracy_plot,
    latency_plot,
    throughput_plot,
    write_plots,
)

# Round, obviously made-up numbers: nothing here is a measurement.
PUBLISHED = {
    name: {"status": "published, not measured here", "source": "synthetic", "params_m": params, "gmacs": gmacs,
           "imagenet_top1_percent": top1,
           "latency_ms": {"device": "iPhone 12", "runtime": "Core ML, all compute units", "value": ms}}
    for name, params, gmacs, top1, ms in (("l1", 10.0, 1.0, 80.0, 1.0), ("l3", 30.0, 4.0, 82.0, 3.0),
                                          ("l7", 80.0, 10.0, 84.0, 7.0))
}


def _latency(p50: float, batch_size: int = 1, converged: bool = True) -> dict:
    return {"backend": "synthetic", "batch_size": batch_size, "measured": "host_end_to_end",
            "stats_ms": {"p50": p50, "p90": p50 + 10, "p99": p50 + 20, "mean": p50, "min": p50 - 5, "max": p50 + 30,
                         "std": 1.0},
            "noise": 0.01, "method": {"converged": converged, "windows": 5},
            "images_per_second": 1000.0 * batch_size / p50}


def _report(*, sweep: bool = True) -> dict:
    backends = [
        {"name": "pytorch-eager", "description": "synthetic", "latency": _latency(100.0), "gflops_per_s": 40.0},
        {"name": "onnxruntime-plain", "description": "synthetic", "latency": _latency(80.0, converged=False),
         "gflops_per_s": 50.0},
        {"name": "onnxruntime-folded", "description": "synthetic", "latency": _latency(50.0), "gflops_per_s": 80.0},
    ]
    throughput = [
        {"backend": backend, "batch_size": b, "images_per_second": rate * b ** 0.5, "latency": _latency(100.0, b)}
        for backend, rate in (("onnxruntime-folded", 20.0), ("onnxruntime-plain", 10.0)) for b in (1, 2, 4, 8)
    ] if sweep else []
    return {
        "schema": "efexport.bench/1",
        "device": {"kind": "cpu", "cpu": "Synthetic CPU 9000", "logical_cores": 2, "os": "Linux"},
        "threads": 2,
        "variants": [{"variant": "l3", "published": copy.deepcopy(PUBLISHED["l3"]), "cost": {"gmacs": 4.0},
                      "backends": backends, "not_measured": {"coreml": "Core ML runs only on macOS"},
                      "throughput": throughput}],
    }


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_write_plots_writes_three_valid_pngs(tmp_path: Path) -> None:
    written = write_plots(_report(), tmp_path / "plots", published_table=PUBLISHED)
    assert set(written) == {"latency", "accuracy", "throughput"}
    for name, path in written.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        width, height = _png_size(path)
        assert width > 600 and height > 300, (name, width, height)
    assert not list((tmp_path / "plots").glob("*.tmp")), "temporary files left behind"


def test_write_plots_skips_throughput_without_a_sweep(tmp_path: Path) -> None:
    written = write_plots(_report(sweep=False), tmp_path)
    assert set(written) == {"latency", "accuracy"}
    assert not (tmp_path / "throughput.png").exists()


def test_throughput_without_a_sweep_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no batch sweep in this report"):
        throughput_plot(_report(sweep=False), tmp_path / "throughput.png")
    assert not list(tmp_path.iterdir())


def test_individual_writers_return_their_path(tmp_path: Path) -> None:
    report = _report()
    for writer, name in ((latency_plot, "latency.png"), (accuracy_plot, "accuracy.png"),
                         (throughput_plot, "throughput.png")):
        path = tmp_path / "deep" / "dir" / name
        assert writer(report, path) == path
        assert _png_size(path)[0] > 600


def test_latency_marks_non_converged_backend() -> None:
    figure = _latency_figure(_report())
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 3
    assert [NOT_CONVERGED in label for label in labels] == [False, True, False]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "p50 (bar)" in legend and "p90 (whisker)" in legend
    assert [t.get_text() for t in ax.texts] == ["100.0 ms", "80.0 ms", "50.0 ms"]  # p50 value labels
    assert "Synthetic CPU 9000" in figure.get_suptitle() and "host end-to-end, batch 1" in figure.get_suptitle()


def test_accuracy_draws_all_published_variants_from_the_table() -> None:
    figure = _accuracy_figure(_report(), published_table=PUBLISHED)
    (ax,) = figure.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    published = [label for label in legend if label.startswith("published")]
    measured = [label for label in legend if label.startswith("measured here")]
    assert published == ["published: iPhone 12 (Core ML), not measured here"]
    assert len(measured) == 1 and "onnxruntime-folded" in measured[0] and "Synthetic CPU 9000" in measured[0]
    annotations = [t.get_text().split("\n")[0] for t in ax.texts if isinstance(t, Annotation)]
    assert sorted(annotations) == ["l1", "l3", "l3", "l7"]  # three published points, one benched variant
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("published"))
    assert line.get_linestyle() == "--" and line.get_markerfacecolor() == "white"
    assert sorted(line.get_xdata()) == [1.0, 3.0, 7.0]
    assert "published figure for every point" in figure.get_suptitle()


def test_accuracy_without_table_uses_only_the_report() -> None:
    figure = _accuracy_figure(_report())
    annotations = [t for t in figure.axes[0].texts if isinstance(t, Annotation)]
    assert len(annotations) == 2  # l3 measured + l3 published


def test_accuracy_falls_back_to_fastest_backend_and_says_so() -> None:
    figure = _accuracy_figure(_report(), backend="tensorrt")
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    measured = next(label for label in legend if label.startswith("measured here"))
    assert "onnxruntime-folded" in measured and "fastest" in measured and "tensorrt" in measured
    line = next(ln for ln in figure.axes[0].get_lines() if ln.get_label().startswith("measured"))
    assert list(line.get_xdata()) == [50.0]


def test_throughput_lines_and_ticks() -> None:
    figure = _throughput_figure(_report())
    (ax,) = figure.axes
    assert [ln.get_label() for ln in ax.get_lines()] == ["l3 · onnxruntime-folded", "l3 · onnxruntime-plain"]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    with pytest.raises(OSError):
        latency_plot(_report(), blocker / "latency.png")
    assert blocker.read_text().startswith("a file")

    # The rename itself fails (the target is a directory): the temporary PNG must be removed.
    (tmp_path / "latency.png").mkdir()
    with pytest.raises(OSError):
        latency_plot(_report(), tmp_path / "latency.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.png", "not-a-dir"]
    assert not list(tmp_path.rglob("*.tmp"))
