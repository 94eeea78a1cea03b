"""sparse_optim: differentiable meta-optimizers for meta- and continual learning."""
from .differentiable import register_higher as _register_higher
from .optim import KroneckerSGD, LookaheadLRSGD, MaskedSGD, MetaOptimizer, RectifiedLRSGD, StochasticMaskedSGD

__version__ = "0.1.0"
__all__ = ["MetaOptimizer", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD", "KroneckerSGD", "StochasticMaskedSGD"]

_register_higher()
