"""Benchmarks that drive the export pipeline: run from the repository root, never shipped in the wheel.

    python -m benchmarks.bench_fold ...      what the fold stage buys in the ONNX graph and ONNX Runtime latency
    python -m benchmarks.bench_pipeline ...  what the pipeline costs on top of the tools it wraps

They sit above every shipped package (``exporter``, ``validate``): they may import anything, nothing imports them.
"""
