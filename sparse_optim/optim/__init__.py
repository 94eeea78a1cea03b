from .base import MetaOptimizer
from .gated import LookaheadLRSGD, MaskedSGD, RectifiedLRSGD

__all__ = ["MetaOptimizer", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD"]
