"""Fixed-capacity experience replay with exact reservoir sampling.

The buffer implements Vitter's *algorithm R* (as used by ER / MER / La-MAML /
sparse-La-MAML): items arrive one at a time; with ``n`` the 1-based index of
the incoming item and ``C`` the capacity,

* if ``n <= C`` the item is written to slot ``n - 1``;
* otherwise an integer ``j`` is drawn uniformly from ``{0, ..., n - 1}`` and,
  if ``j < C``, the item replaces slot ``j`` (so it is kept with probability
  ``C / n`` and evicts a uniformly random resident), else it is discarded.

After ``n`` items every subset of size ``min(n, C)`` of the stream is equally
likely to be resident; in particular each item is resident with probability
``min(1, C / n)``.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["ReservoirBuffer"]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class ReservoirBuffer:
    """Replay memory of ``capacity`` items filled by reservoir sampling.

    Each item is a tuple of tensors (e.g. ``(x, y, task_id)``); :meth:`add`
    takes a *batch* of items, i.e. tensors sharing their first dimension, and
    processes them one by one in order. Storage (``capacity x item_shape`` per
    field, on the device / dtype of the first batch) is preallocated on the
    first :meth:`add`; later batches must match the per-item shapes and dtypes.

    All randomness (slot replacement and :meth:`sample`) comes from the
    buffer's own CPU :class:`torch.Generator`, so runs are reproducible and a
    run resumed from :meth:`state_dict` continues bit-identically.

    Args:
        capacity: maximum number of stored items (> 0).
        generator: CPU generator to draw from (used as is, not copied).
        seed: seed for a fresh generator. Give at most one of ``generator``
            / ``seed``; with neither, a seed is drawn from torch's global RNG
            (so ``torch.manual_seed`` makes it reproducible).
    """

    def __init__(
        self,
        capacity: int,
        generator: Optional[torch.Generator] = None,
        *,
        seed: Optional[int] = None,
    ) -> None:
        self._capacity = _check_int(capacity, "capacity", 1)
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(
                    f"generator must be a torch.Generator, got {type(generator).__name__}"
                )
            if generator.device.type != "cpu":
                raise ValueError(
                    f"generator must be a CPU generator, got device {generator.device}"
                )
            self._generator = generator
        else:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
            else:
                seed = _check_int(seed, "seed", 0)
            self._generator = torch.Generator()
            self._generator.manual_seed(seed)
        self._storage: Optional[List[Tensor]] = None
        self._size = 0
        self._num_seen = 0

    # ------------------------------------------------------------------ info
    @property
    def capacity(self) -> int:
        """Maximum number of stored items."""
        return self._capacity

    @property
    def num_seen(self) -> int:
        """Number of items offered to :meth:`add` since creation / :meth:`clear`."""
        return self._num_seen

    @property
    def generator(self) -> torch.Generator:
        """The buffer's random number generator."""
        return self._generator

    def __len__(self) -> int:
        return self._size

    def is_full(self) -> bool:
        """Whether ``len(self) == capacity``."""
        return self._size == self._capacity

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self._capacity}, size={self._size}, "
            f"num_seen={self._num_seen})"
        )

    @property
    def tensors(self) -> Tuple[Tensor, ...]:
        """Views of the occupied slots, one tensor per field (``[len, *shape]``)."""
        if self._storage is None:
            return ()
        return tuple(s[: self._size] for s in self._storage)

    # ------------------------------------------------------------------- add
    def _validate_batch(self, tensors: Tuple[Tensor, ...]) -> int:
        if len(tensors) == 0:
            raise ValueError("add() needs at least one tensor")
        for k, t in enumerate(tensors):
            if not isinstance(t, Tensor):
                raise TypeError(f"tensors[{k}] must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() == 0:
                raise ValueError(
                    f"tensors[{k}] must have a batch dimension, got a 0-d tensor"
                )
        batch = tensors[0].shape[0]
        for k, t in enumerate(tensors):
            if t.shape[0] != batch:
                raise ValueError(
                    f"tensors[{k}] has batch size {t.shape[0]}, expected {batch} "
                    "(all tensors must share their first dimension)"
                )
        if self._storage is not None:
            if len(tensors) != len(self._storage):
                raise ValueError(
                    f"expected {len(self._storage)} tensors per item, got {len(tensors)}"
                )
            for k, (t, s) in enumerate(zip(tensors, self._storage)):
                if t.shape[1:] != s.shape[1:]:
                    raise ValueError(
                        f"tensors[{k}] has item shape {tuple(t.shape[1:])}, "
                        f"buffer stores {tuple(s.shape[1:])}"
                    )
                if t.dtype != s.dtype:
                    raise TypeError(
                        f"tensors[{k}] has dtype {t.dtype}, buffer stores {s.dtype}"
                    )
        return batch

    @torch.no_grad()
    def add(self, *tensors: Tensor) -> None:
        """Offer a batch of items (first dimension = batch) to the reservoir.

        Items are processed in order with algorithm R; tensors are detached
        and copied into the buffer's storage.
        """
        batch = self._validate_batch(tensors)
        if self._storage is None:
            self._storage = [
                torch.empty(
                    (self._capacity,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device
                )
                for t in tensors
            ]
        # Decide, item by item, which slot (if any) each incoming item goes to.
        # Later items of the same batch may overwrite earlier ones; the dict
        # keeps only the final writer of each slot.
        slot_to_item: Dict[int, int] = {}
        n = self._num_seen
        for i in range(batch):
            n += 1
            if n <= self._capacity:
                slot_to_item[n - 1] = i
            else:
                j = int(torch.randint(0, n, (1,), generator=self._generator).item())
                if j < self._capacity:
                    slot_to_item[j] = i
        self._num_seen = n
        self._size = min(n, self._capacity)
        if slot_to_item:
            slots = torch.tensor(list(slot_to_item.keys()), dtype=torch.long)
            items = torch.tensor(list(slot_to_item.values()), dtype=torch.long)
            for s, t in zip(self._storage, tensors):
                src = t.detach()
                s[slots.to(s.device)] = src[items.to(src.device)].to(s.device)

    # ---------------------------------------------------------------- sample
    @torch.no_grad()
    def sample(self, batch_size: int) -> Tuple[Tensor, ...]:
        """Draw ``min(batch_size, len(self))`` distinct stored items uniformly.

        Returns one stacked tensor per field (new tensors, not views).
        """
        batch_size = _check_int(batch_size, "batch_size", 0)
        if self._storage is None or self._size == 0:
            raise RuntimeError("cannot sample from an empty ReservoirBuffer")
        k = min(batch_size, self._size)
        idx = torch.randperm(self._size, generator=self._generator)[:k]
        return tuple(s[idx.to(s.device)] for s in self._storage)

    # ----------------------------------------------------------------- state
    def clear(self) -> None:
        """Forget all items and release the storage (the RNG is left as is)."""
        self._storage = None
        self._size = 0
        self._num_seen = 0

    def state_dict(self) -> Dict[str, Any]:
        """Snapshot: capacity, counters, occupied storage and the RNG state."""
        return {
            "capacity": self._capacity,
            "num_seen": self._num_seen,
            "size": self._size,
            "storage": None
            if self._storage is None
            else [s[: self._size].clone() for s in self._storage],
            "rng_state": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot (capacity must match)."""
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be a dict, got {type(state_dict).__name__}"
            )
        missing = {"capacity", "num_seen", "size", "storage", "rng_state"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict is missing keys {sorted(missing)}")
        if state_dict["capacity"] != self._capacity:
            raise ValueError(
                f"state_dict has capacity {state_dict['capacity']}, "
                f"buffer has capacity {self._capacity}"
            )
        size = _check_int(state_dict["size"], "state_dict['size']", 0)
        num_seen = _check_int(state_dict["num_seen"], "state_dict['num_seen']", 0)
        if size != min(num_seen, self._capacity):
            raise ValueError(
                f"state_dict is inconsistent: size={size}, num_seen={num_seen}"
            )
        stored = state_dict["storage"]
        if stored is None:
            storage = None
            if size != 0:
                raise ValueError("state_dict has size > 0 but no storage")
        else:
            storage = []
            for k, t in enumerate(stored):
                if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] != size:
                    raise ValueError(
                        f"state_dict['storage'][{k}] must be a tensor with {size} rows"
                    )
                s = torch.empty(
                    (self._capacity,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device
                )
                s[:size] = t
                storage.append(s)
        self._generator.set_state(state_dict["rng_state"])
        self._storage = storage
        self._size = size
        self._num_seen = num_seen
