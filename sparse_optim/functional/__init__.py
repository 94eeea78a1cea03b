"""Pure update rules on tensors / lists / dicts of tensors (differentiable, torch.func-friendly),
and the dispatchers of the in-place multi-tensor ops (:func:`gated_sgd_`, :func:`kronecker_sgd_`)."""
from .gated import (first_order_meta_grad, gated_meta_grad_, gated_sgd, gated_sgd_, gated_step, gated_update,
                    lookahead_sgd, masked_sgd, meta_sgd, rectified_sgd)
from .gates import Gate, gate, gate_derivative, gate_kinds, get_gate, register_gate
from .kronecker import (adapted_factors, init_factors, kronecker_sgd, kronecker_sgd_, kronecker_transform,
                        kronecker_update)
from .sgd import sgd_direction

__all__ = [
    "masked_sgd", "rectified_sgd", "lookahead_sgd", "meta_sgd", "kronecker_sgd",
    "gated_sgd", "gated_sgd_", "gated_meta_grad_", "kronecker_sgd_",
    "gated_update", "gated_step", "first_order_meta_grad", "gate", "gate_derivative",
    "Gate", "get_gate", "gate_kinds", "register_gate",
    "init_factors", "kronecker_transform", "kronecker_update", "adapted_factors", "sgd_direction",
]
