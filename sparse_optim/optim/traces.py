"""Inner-gradient traces: what an optimizer records during inner steps for its first-order
meta-gradient. One typed trace per family; :class:`~sparse_optim.optim.base.MetaOptimizer`
only clears, checks and checkpoints them."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

Tensor = torch.Tensor


class DirectionSums:
    """Gated family: per parameter, ``sum_k d_k`` of the inner directions (sparse-MAML Eq. 5;
    decayed by ``online_decay`` in online mode), in the meta-parameter's precision."""

    def __init__(self) -> None:
        self.sums: Dict[Tensor, Tensor] = {}

    def __contains__(self, p: Tensor) -> bool:
        return p in self.sums

    def __getitem__(self, p: Tensor) -> Tensor:
        return self.sums[p]

    def for_params(self, params: List[Tensor], metas: List[Tensor]) -> List[Tensor]:
        """The sums of ``params`` (zeros where none is recorded yet), to accumulate into."""
        sums = self.sums
        out = []
        for p, m in zip(params, metas):
            t = sums.get(p)
            if t is None:
                t = sums[p] = torch.zeros_like(m, memory_format=torch.preserve_format).detach()
            out.append(t)
        return out

    def tensors(self) -> List[Tensor]:
        return list(self.sums.values())

    def clear(self) -> None:
        self.sums = {}

    def state(self, p: Tensor) -> Optional[Tensor]:
        t = self.sums.get(p)
        return None if t is None else t.detach().clone()

    def load(self, p: Tensor, saved: Optional[Tensor]) -> None:
        if saved is not None:
            self.sums[p] = saved.detach().clone().to(device=p.device)


class DirectionHistory:
    """Kronecker family: per parameter, the inner directions ``d_k`` with the factors that
    transformed them (``None``: the meta-parameters themselves; else fast, adapted copies)."""

    def __init__(self) -> None:
        self.entries: Dict[Tensor, List[Tuple[Tensor, Optional[Dict[str, Tensor]]]]] = {}

    def __contains__(self, p: Tensor) -> bool:
        return p in self.entries

    def __getitem__(self, p: Tensor) -> List[Tuple[Tensor, Optional[Dict[str, Tensor]]]]:
        return self.entries[p]

    def get(self, p: Tensor):
        return self.entries.get(p)

    def append(self, p: Tensor, direction: Tensor, factors: Optional[Dict[str, Tensor]], keep: bool) -> None:
        """Record ``direction``; ``keep=False`` keeps only the latest (online adaptation)."""
        if keep:
            self.entries.setdefault(p, []).append((direction, factors))
        else:
            self.entries[p] = [(direction, factors)]

    def tensors(self) -> List[Tensor]:
        return [d for entries in self.entries.values() for d, _ in entries]

    def clear(self) -> None:
        self.entries = {}

    def state(self, p: Tensor) -> Any:
        entries = self.entries.get(p)
        if entries is None:
            return None
        return [(d.detach().clone(), None if f is None else {k: v.detach().clone() for k, v in f.items()})
                for d, f in entries]

    def load(self, p: Tensor, saved: Any) -> None:
        if saved is not None:
            self.entries[p] = [(d.detach().clone().to(p.device),
                                None if f is None else {k: v.detach().clone().to(p.device) for k, v in f.items()})
                               for d, f in saved]
