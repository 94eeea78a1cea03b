from .base import MetaOptimizer
from .gated import LookaheadLRSGD, MaskedSGD, RectifiedLRSGD
from .kronecker import KroneckerSGD

__all__ = ["MetaOptimizer", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD", "KroneckerSGD"]
