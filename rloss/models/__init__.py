"""Segmentation networks: DeepLabV3+ on ResNet-50/101, MobileNetV3-Large or a tiny CPU backbone."""

from .deeplabv3plus import (
    MODEL_NAMES,
    DeepLabV3Plus,
    PretrainedWeightsUnavailable,
    build_model,
)

__all__ = ["MODEL_NAMES", "DeepLabV3Plus", "PretrainedWeightsUnavailable", "build_model"]
