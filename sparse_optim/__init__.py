"""sparse_optim: differentiable meta-optimizers for meta- and continual learning."""
from .optim import KroneckerSGD, LookaheadLRSGD, MaskedSGD, MetaOptimizer, RectifiedLRSGD, StochasticMaskedSGD

__version__ = "0.1.0"
__all__ = ["MetaOptimizer", "MaskedSGD", "RectifiedLRSGD", "LookaheadLRSGD", "KroneckerSGD", "StochasticMaskedSGD"]
