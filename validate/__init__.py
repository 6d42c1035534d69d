"""Validation: reference inputs, numerical parity against PyTorch, and latency measurement."""
