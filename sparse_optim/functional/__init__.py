"""Pure update rules on tensors / lists / dicts of tensors (differentiable, torch.func-friendly)."""
from .gated import first_order_meta_grad, gated_step, gated_update, lookahead_sgd, masked_sgd, rectified_sgd
from .gates import gate, gate_derivative
from .kronecker import init_factors, kronecker_sgd, kronecker_transform, kronecker_update
from .sgd import sgd_direction

__all__ = [
    "masked_sgd", "rectified_sgd", "lookahead_sgd", "kronecker_sgd",
    "gated_update", "gated_step", "first_order_meta_grad", "gate", "gate_derivative",
    "init_factors", "kronecker_transform", "kronecker_update", "sgd_direction",
]
