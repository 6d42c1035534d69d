"""Pipeline stages: load -> fold -> capture -> export -> validate -> benchmark -> package.

Each stage is a function from typed inputs to a typed result; targets (ONNX, later Core ML and TensorRT)
plug in their own export and runtime, and share the rest.
"""
