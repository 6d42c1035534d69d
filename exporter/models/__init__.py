"""EfficientFormer model definitions, checkpoint layouts and realistic random weights."""

from efexport.exporter.models.efficientformer import CONFIGS, VARIANTS, EfficientFormer, build_model

__all__ = ["CONFIGS", "VARIANTS", "EfficientFormer", "build_model"]
