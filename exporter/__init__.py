"""efexport: EfficientFormer checkpoints to deployable, verified, documented artifacts."""

__version__ = "0.1.0"
