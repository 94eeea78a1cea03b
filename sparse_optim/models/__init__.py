"""Few-shot / continual-learning backbones (ConvNet4, SCNN, ResNet-12, linear models, MLP)."""

from .convnets import SCNN, ConvBlock, ConvNet, ConvNet4
from .lamaml_cnn import LaMAMLConvNet
from .linear import LinearNet
from .mlp import MLP, count_parameters
from .resnet import RESNET12_CHANNELS, ResNet12, ResNetBlock

__all__ = ["ConvBlock", "ConvNet", "ConvNet4", "SCNN", "ResNet12", "ResNetBlock", "RESNET12_CHANNELS",
           "LinearNet", "MLP", "count_parameters", "LaMAMLConvNet"]
