"""The registry of optimizers under test (tests/conftest.py) is complete and agrees with the classes."""
import torch

import sparse_optim as so
from sparse_optim import functional as F

from conftest import GATE_KINDS, OPTIMIZERS


def test_registry_covers_every_exported_optimizer_and_gate():
    """A new optimizer class or gate kind must be added to the registry (and so to the suite)."""
    exported = {getattr(so, n) for n in so.__all__ if isinstance(getattr(so, n), type)}
    concrete = {c for c in exported if issubclass(c, torch.optim.Optimizer) and c not in (so.MetaOptimizer, so.GatedSGD)}
    assert concrete == {i.cls for i in OPTIMIZERS}
    assert set(F.gate_kinds()) == set(GATE_KINDS)
    for info in OPTIMIZERS:
        if info.gated:
            assert info.cls.gate_kind == info.gate and info.cls.meta_key == info.meta_key, info
        assert info.cls.meta_lr_name == info.meta_lr, info
        assert info.cls.default_update_params == info.update_params_default, info
        assert len({v.desc for v in info.variants}) == len(info.variants), info
        opt = info.make([torch.nn.Parameter(torch.randn(3, 2))])
        assert all(n.endswith(info.meta_keys) for n, _ in opt.named_meta_parameters()), info
        if info.supports_online:
            info.make([torch.nn.Parameter(torch.randn(3, 2))], **info.online_kwargs)
