from .base import MetaOptimizer
from .episode import Episode, first_order_episode
from .gated import GatedSGD, LookaheadLRSGD, MaskedSGD, MetaSGD, RectifiedLRSGD, StochasticMaskedSGD
from .kronecker import KroneckerSGD

__all__ = ["MetaOptimizer", "GatedSGD", "MetaSGD", "Episode", "first_order_episode", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD", "KroneckerSGD", "StochasticMaskedSGD"]
