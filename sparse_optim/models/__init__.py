"""Few-shot / continual-learning backbones (ConvNet4, SCNN, MLP)."""

from .convnets import SCNN, ConvBlock, ConvNet, ConvNet4
from .mlp import MLP, count_parameters

__all__ = ["ConvBlock", "ConvNet", "ConvNet4", "SCNN", "MLP", "count_parameters"]
