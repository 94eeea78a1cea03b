"""The Triton kernels (sparse_optim/ops/triton_ops.py, the fused path for CUDA tensors without
nvcc) against the reference ops, run on the CPU by Triton's interpreter in a subprocess
(TRITON_INTERPRET=1 must be set before Triton is imported)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

_PROBE = r"""
import itertools, torch
import sparse_optim as so
from sparse_optim import ops
from sparse_optim.ops import reference, triton_ops
assert triton_ops.available("cpu")
torch.manual_seed(0)

def clone(lst):
    return [None if t is None else t.clone() for t in lst]

checked = 0
sizes = [1, 1023, 1024, 1025, 3000]
for kind, (momentum, nesterov, dampening), wd, maximize, trace, (pdt, mdt), fresh in itertools.product(
        ("step", "relu", "linear"), ((0.0, False, 0.0), (0.9, False, 0.1), (0.9, True, 0.0)), (0.0, 0.01),
        (False, True), (False, True), ((torch.float32, torch.float32), (torch.bfloat16, torch.float32)),
        (False, True)):
    if momentum == 0 and fresh:
        continue
    p = [torch.randn(n, dtype=pdt) for n in sizes]
    g = [torch.randn(n, dtype=pdt) for n in sizes]
    m = [torch.randn(n, dtype=mdt) for n in sizes]
    b = [None if (fresh or momentum == 0) else torch.randn(n, dtype=pdt) for n in sizes]
    t = [torch.randn(n, dtype=mdt) for n in sizes] if trace else None
    kw = dict(kind=kind, scale=0.1, weight_decay=wd, momentum=momentum, dampening=dampening, nesterov=nesterov,
              maximize=maximize, trace_decay=0.5 if trace else 1.0)
    ref = [clone(p), clone(g), clone(m), clone(b), None if t is None else clone(t)]
    reference.gated_sgd_step_(*ref, **kw)
    triton_ops.gated_sgd_step_(p, g, m, b, t, **kw)
    # bfloat16: the reference rounds every intermediate to bfloat16, the kernel once (a few ulps)
    tol = dict(rtol=1e-6, atol=1e-6) if pdt == torch.float32 else dict(rtol=2e-2, atol=3e-2)
    for a, e in zip(p + (b if momentum else []) + (t or []), ref[0] + (ref[3] if momentum else []) + (ref[4] or [])):
        torch.testing.assert_close(a, e, **tol)
    checked += 1

for kind, st in itertools.product(("step", "relu", "linear"), (False, True)):
    mg = [torch.randn(n) for n in sizes]; g = [torch.randn(n) for n in sizes]
    t = [torch.randn(n) for n in sizes]; m = [torch.randn(n) for n in sizes]
    ref = clone(mg)
    reference.meta_grad_accumulate_(ref, g, t, m, kind=kind, scale=0.3, straight_through=st)
    triton_ops.meta_grad_accumulate_(mg, g, t, m, kind=kind, scale=0.3, straight_through=st)
    for a, e in zip(mg, ref):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    checked += 1

# refused inputs write nothing and leave the dispatcher to the reference ops
x = torch.zeros(4, 4).t()
try:
    triton_ops.gated_sgd_step_([x], [torch.ones(4, 4)], [torch.zeros(4, 4)], [None], None, kind="step", scale=1.0)
    raise AssertionError("non-contiguous accepted")
except NotImplementedError:
    assert torch.equal(x, torch.zeros(4, 4))

# an optimizer forced onto the Triton path follows the reference backend
def run(backend):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    opt = so.LookaheadLRSGD(model.named_parameters(), lr=0.1, rate_lr=0.2, momentum=0.5, backend=backend)
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    with opt.episode():
        for _ in range(3):
            opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), 1 - y).backward(); opt.meta_backward()
    opt.meta_step()
    return [p.detach() for p in model.parameters()] + [m.detach() for m in opt.meta_parameters()]
assert ops.backend(torch.device("cpu"), "triton") == "triton"
for a, e in zip(run("triton"), run("reference")):
    torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
print("ok", checked)
"""


def test_triton_kernels_match_the_reference_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_PROBE)], capture_output=True, text=True,
                            env=env, timeout=1200)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-4000:]
