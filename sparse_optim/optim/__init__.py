from .base import MetaOptimizer
from .gated import LookaheadLRSGD, MaskedSGD, RectifiedLRSGD, StochasticMaskedSGD
from .kronecker import KroneckerSGD

__all__ = ["MetaOptimizer", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD", "KroneckerSGD", "StochasticMaskedSGD"]
