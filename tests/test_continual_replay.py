"""Tests for sparse_optim.continual.replay.ReservoirBuffer."""
import io
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_optim.continual.replay import ReservoirBuffer


def _ids(buf):
    return sorted(buf.tensors[0].tolist())


# --------------------------------------------------------------------------- #
# basic behaviour
# --------------------------------------------------------------------------- #
def test_fill_phase_keeps_items_in_order():
    buf = ReservoirBuffer(5, seed=0)
    assert len(buf) == 0 and buf.num_seen == 0 and buf.capacity == 5
    buf.add(torch.arange(3), torch.arange(3) * 10)
    assert len(buf) == 3 and buf.num_seen == 3 and not buf.is_full()
    buf.add(torch.arange(3, 5), torch.arange(3, 5) * 10)
    assert buf.is_full()
    ids, tens = buf.tensors
    assert ids.tolist() == [0, 1, 2, 3, 4]
    assert tens.tolist() == [0, 10, 20, 30, 40]
    buf.add(torch.arange(5, 105), torch.arange(5, 105) * 10)
    assert len(buf) == 5 and buf.num_seen == 105
    ids, tens = buf.tensors
    assert torch.equal(tens, ids * 10)  # fields of one item stay together
    assert len(set(ids.tolist())) == 5


def test_multi_field_items_and_shapes():
    buf = ReservoirBuffer(4, seed=1)
    ids = torch.arange(20)
    x = ids.float()[:, None, None].expand(20, 2, 3).clone()
    t = ids // 5
    buf.add(x, ids, t)
    xs, ys, ts = buf.sample(3)
    assert xs.shape == (3, 2, 3) and xs.dtype == torch.float32
    assert ys.shape == (3,) and ys.dtype == torch.int64
    assert torch.equal(xs[:, 0, 0].long(), ys)
    assert torch.equal(ts, ys // 5)


def test_add_detaches_and_copies():
    buf = ReservoirBuffer(3, seed=0)
    x = torch.ones(2, 4, requires_grad=True)
    buf.add(x)
    assert not buf.tensors[0].requires_grad
    src = torch.zeros(1, 4)
    buf.add(src)
    src += 7  # mutating the source must not change the buffer
    assert torch.all(buf.tensors[0][2] == 0)


def test_batched_add_equals_one_by_one_add():
    items = torch.arange(200)
    a = ReservoirBuffer(16, seed=123)
    a.add(items)
    b = ReservoirBuffer(16, seed=123)
    for i in range(200):
        b.add(items[i : i + 1])
    c = ReservoirBuffer(16, seed=123)
    for chunk in items.split(7):
        c.add(chunk)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert torch.equal(a.tensors[0], c.tensors[0])
    assert a.num_seen == b.num_seen == c.num_seen == 200


def test_seed_and_generator_reproducible():
    g = torch.Generator().manual_seed(5)
    a = ReservoirBuffer(8, generator=g)
    b = ReservoirBuffer(8, seed=5)
    c = ReservoirBuffer(8, seed=6)
    for buf in (a, b, c):
        buf.add(torch.arange(100))
    assert a.generator is g
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert torch.equal(a.sample(4)[0], b.sample(4)[0])
    assert not torch.equal(a.tensors[0], c.tensors[0])


def test_default_seed_follows_global_torch_seed():
    torch.manual_seed(0)
    a = ReservoirBuffer(4)
    torch.manual_seed(0)
    b = ReservoirBuffer(4)
    a.add(torch.arange(50))
    b.add(torch.arange(50))
    assert torch.equal(a.tensors[0], b.tensors[0])


def test_clear():
    buf = ReservoirBuffer(3, seed=0)
    buf.add(torch.arange(10))
    buf.clear()
    assert len(buf) == 0 and buf.num_seen == 0 and buf.tensors == ()
    with pytest.raises(RuntimeError):
        buf.sample(1)
    buf.add(torch.zeros(2, 5))  # a new item layout is allowed after clear()
    assert buf.tensors[0].shape == (2, 5)


# --------------------------------------------------------------------------- #
# exactness of reservoir sampling (statistical, fixed seed)
# --------------------------------------------------------------------------- #
def test_inclusion_probability_is_capacity_over_n_at_every_step():
    """After n items, every item is resident with probability min(1, C/n)."""
    C, N, reps = 5, 20, 1000
    counts = torch.zeros(N + 1, N, dtype=torch.float64)  # counts[n, item]
    g = torch.Generator().manual_seed(2024)
    buf = ReservoirBuffer(C, generator=g)
    for _ in range(reps):
        buf.clear()
        for n in range(1, N + 1):
            buf.add(torch.tensor([n - 1]))
            counts[n, buf.tensors[0]] += 1
    worst = 0.0
    for n in range(1, N + 1):
        p = min(1.0, C / n)
        for item in range(n):
            sd = math.sqrt(reps * p * (1 - p))
            dev = abs(counts[n, item].item() - reps * p)
            if sd == 0:
                assert dev == 0, (n, item)
            else:
                worst = max(worst, dev / sd)
        assert counts[n, n:].sum() == 0  # future items never resident
    # ~210 binomial cells; 5 sigma is far beyond sampling noise, while an
    # off-by-one in the replacement draw (e.g. keeping item C+1 surely) is > 15 sigma.
    assert worst < 5.0, worst


def test_resident_subsets_are_uniform():
    """Algorithm R makes all C-subsets of the n items equally likely (chi-square)."""
    C, N, reps = 2, 5, 3000
    subsets = list(itertools.combinations(range(N), C))
    index = {s: k for k, s in enumerate(subsets)}
    counts = torch.zeros(len(subsets))
    buf = ReservoirBuffer(C, seed=7)
    for _ in range(reps):
        buf.clear()
        buf.add(torch.arange(N))
        counts[index[tuple(_ids(buf))]] += 1
    expected = reps / len(subsets)
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 27.88, chi2  # df = 9, p = 0.001 critical value


def test_sample_is_uniform_over_residents():
    C, reps, k = 10, 2000, 3
    buf = ReservoirBuffer(C, seed=3)
    buf.add(torch.arange(C))
    counts = torch.zeros(C)
    for _ in range(reps):
        (ids,) = buf.sample(k)
        counts[ids] += 1
    p = k / C
    sd = math.sqrt(reps * p * (1 - p))
    assert ((counts - reps * p).abs() / sd).max() < 5


# --------------------------------------------------------------------------- #
# sampling without replacement
# --------------------------------------------------------------------------- #
@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(1, 30),
    n_items=st.integers(1, 80),
    batch_size=st.integers(0, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_sample_without_replacement(capacity, n_items, batch_size, seed):
    buf = ReservoirBuffer(capacity, seed=seed)
    buf.add(torch.arange(n_items), -torch.arange(n_items))
    assert len(buf) == min(capacity, n_items)
    ids, neg = buf.sample(batch_size)
    assert ids.shape[0] == min(batch_size, len(buf))
    assert len(set(ids.tolist())) == ids.shape[0]  # distinct
    assert set(ids.tolist()) <= set(buf.tensors[0].tolist())  # residents only
    assert torch.equal(neg, -ids)


def test_sample_larger_than_buffer_returns_all_residents():
    buf = ReservoirBuffer(10, seed=0)
    buf.add(torch.arange(4))
    (ids,) = buf.sample(100)
    assert sorted(ids.tolist()) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- #
# state_dict
# --------------------------------------------------------------------------- #
def _continue(buf, start):
    out = []
    for step in range(5):
        buf.add(torch.arange(start + 7 * step, start + 7 * (step + 1)).float()[:, None] * torch.ones(1, 3),
                torch.arange(start + 7 * step, start + 7 * (step + 1)))
        out.extend(buf.sample(4))
    out.extend(buf.tensors)
    return out


@pytest.mark.parametrize("n_before", [0, 3, 50])
def test_state_dict_round_trip_is_bit_identical(n_before):
    a = ReservoirBuffer(8, seed=11)
    if n_before:
        a.add(torch.arange(n_before).float()[:, None] * torch.ones(1, 3), torch.arange(n_before))
        a.sample(2)  # advance the RNG too
    f = io.BytesIO()
    torch.save(a.state_dict(), f)
    f.seek(0)
    state = torch.load(f, weights_only=False)

    b = ReservoirBuffer(8, seed=999)  # different RNG, overwritten by the state
    b.load_state_dict(state)
    assert len(b) == len(a) and b.num_seen == a.num_seen
    out_a = _continue(a, 1000)
    out_b = _continue(b, 1000)
    assert len(out_a) == len(out_b)
    for x, y in zip(out_a, out_b):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_state_dict_is_a_snapshot():
    a = ReservoirBuffer(4, seed=0)
    a.add(torch.arange(4))
    state = a.state_dict()
    a.add(torch.arange(100, 200))
    assert state["storage"][0].tolist() == [0, 1, 2, 3]
    assert state["num_seen"] == 4


def test_load_state_dict_rejects_mismatch():
    a = ReservoirBuffer(4, seed=0)
    a.add(torch.arange(10))
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBuffer(5).load_state_dict(a.state_dict())
    bad = a.state_dict()
    bad["size"] = 3
    with pytest.raises(ValueError):
        ReservoirBuffer(4).load_state_dict(bad)
    bad = a.state_dict()
    del bad["rng_state"]
    with pytest.raises(ValueError, match="rng_state"):
        ReservoirBuffer(4).load_state_dict(bad)
    with pytest.raises(TypeError, match="state_dict"):
        ReservoirBuffer(4).load_state_dict([1, 2])


# --------------------------------------------------------------------------- #
# bad arguments
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cap,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                     (True, TypeError), ("4", TypeError)])
def test_bad_capacity(cap, exc):
    with pytest.raises(exc, match="capacity"):
        ReservoirBuffer(cap)


def test_bad_generator_and_seed():
    with pytest.raises(TypeError, match="generator"):
        ReservoirBuffer(3, generator=123)
    with pytest.raises(ValueError, match="generator or seed"):
        ReservoirBuffer(3, generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match="seed"):
        ReservoirBuffer(3, seed=1.5)


def test_bad_adds():
    buf = ReservoirBuffer(3, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        buf.add()
    with pytest.raises(TypeError, match=r"tensors\[1\]"):
        buf.add(torch.zeros(2), [1, 2])
    with pytest.raises(ValueError, match=r"tensors\[0\]"):
        buf.add(torch.tensor(1.0))
    with pytest.raises(ValueError, match="batch size"):
        buf.add(torch.zeros(2, 3), torch.zeros(3))
    buf.add(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="item shape"):
        buf.add(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype"):
        buf.add(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="tensors per item"):
        buf.add(torch.zeros(2, 3))
    assert buf.num_seen == 2  # failed adds change nothing


def test_bad_sample():
    buf = ReservoirBuffer(3, seed=0)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2)
    buf.add(torch.arange(3))
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(-1)
    with pytest.raises(TypeError, match="batch_size"):
        buf.sample(2.0)
