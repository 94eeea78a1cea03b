"""Two CPU processes (gloo, loopback): DDP and task-parallel recipes stay in sync and match one process."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import sparse_optim as so
from sparse_optim.distributed import all_reduce_meta_gradients

from conftest import BY_NAME

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 8, 4, generator=g), torch.randint(0, 3, (3, 8), generator=g)


def _make_opt(params, cls):
    """The registry's (conftest.py) optimizer ``cls`` by name."""
    torch.manual_seed(2)
    return BY_NAME[cls].make(params, lr=0.3, meta_lr=0.5)


def _meta_iterations(model, opt, xs, ys, iters=3, sync=None):
    """first-order episodes on the given batches; returns final params + meta-params"""
    for it in range(iters):
        with opt.episode():
            for _ in range(2):
                opt.zero_grad(); F.cross_entropy(model(xs[it]), ys[it]).backward(); opt.step()
            opt.zero_grad(); F.cross_entropy(model(xs[it]), (ys[it] + 1) % 3).backward(); opt.meta_backward()
        if sync is not None:
            sync(opt)
        opt.meta_step(update_params=True)
        opt.zero_grad()
    return [p.detach().clone() for p in opt._ordered_params()] + [m.detach().clone() for m in opt.meta_parameters()]


CLASSES = list(BY_NAME)  # every optimizer of the registry


def _worker(rank, port, out):
    """One process group for every case (spawning processes is the slow part)."""
    import datetime
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        xs, ys = _data()
        shard = slice(rank * 4, rank * 4 + 4)
        results = {}
        for cls in CLASSES:
            model = _model()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            results[("ddp", cls)] = _meta_iterations(ddp, _make_opt(ddp.parameters(), cls), xs[:, shard], ys[:, shard])
        # task parallel: each rank adapts on its own half with the plain model, explicit all-reduce
        model = _model()
        results[("tasks", "masked")] = _meta_iterations(
            model, _make_opt(model.parameters(), "masked"), xs[:, shard], ys[:, shard], sync=all_reduce_meta_gradients)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("cls", CLASSES)
def test_ddp_ranks_agree_and_match_single_process(rank_results, cls):
    r0, r1 = (r[("ddp", cls)] for r in rank_results)
    for a, b in zip(r0, r1):
        assert torch.equal(a, b)
    xs, ys = _data()
    model = _model()
    single = _meta_iterations(model, _make_opt(model.parameters(), cls), xs, ys)
    for a, b in zip(r0, single):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_task_parallel_all_reduce_agrees_across_ranks_and_averages(rank_results):
    r0, r1 = (r[("tasks", "masked")] for r in rank_results)
    for a, b in zip(r0, r1):
        assert torch.equal(a, b)
    # one process, both halves as a meta-batch of two episodes, gradients averaged
    xs, ys = _data()
    model = _model()
    opt = _make_opt(model.parameters(), "masked")
    for it in range(3):
        for shard in (slice(0, 4), slice(4, 8)):
            with opt.episode():
                for _ in range(2):
                    opt.zero_grad(); F.cross_entropy(model(xs[it, shard]), ys[it, shard]).backward(); opt.step()
                opt.zero_grad(); F.cross_entropy(model(xs[it, shard]), (ys[it, shard] + 1) % 3).backward()
                opt.meta_backward()
        for t in opt.meta_parameters() + list(model.parameters()):
            t.grad /= WORLD
        opt.meta_step(update_params=True)
        opt.zero_grad()
    single = [p.detach() for p in model.parameters()] + [m.detach() for m in opt.meta_parameters()]
    for a, b in zip(r0, single):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_all_reduce_requires_process_group():
    opt = so.MaskedSGD(_model().parameters())
    with pytest.raises(RuntimeError, match="process group"):
        all_reduce_meta_gradients(opt)
