"""sparse_optim: differentiable meta-optimizers for meta- and continual learning."""
from .differentiable import register_higher as _register_higher
from .optim import (GatedSGD, KroneckerSGD, LookaheadLRSGD, MaskedSGD, MetaOptimizer, MetaSGD, RectifiedLRSGD,
                    StochasticMaskedSGD, first_order_episode)

__version__ = "0.1.0"
__all__ = ["MetaOptimizer", "GatedSGD", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD", "KroneckerSGD",
           "StochasticMaskedSGD", "MetaSGD", "first_order_episode"]

_register_higher()
