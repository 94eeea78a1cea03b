"""Smoke tests of examples/kfo_synthetic.py and examples/fewshot.py: every method for a few
meta-iterations at tiny sizes, JSON / PNG structure, learning (post-adaptation accuracy above
pre-adaptation accuracy, fixed seeds), checkpoint + --resume round trip."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kfo():
    pytest.importorskip("matplotlib")
    return _load("kfo_synthetic")


@pytest.fixture(scope="module")
def fewshot():
    pytest.importorskip("matplotlib")
    return _load("fewshot")


@pytest.fixture(autouse=True)
def _one_thread_reference_ops():
    """The examples set one thread; restore. The smoke tests exercise the examples, not the
    kernels, so they run on the reference ops (no extension build inside this file's budget)."""
    from sparse_optim import ops

    threads = torch.get_num_threads()
    with ops.use_backend("reference"):
        yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- KFO synthetic
def test_one_step_ceiling(kfo):
    assert kfo.one_step_ceiling(500) == pytest.approx(1 - math.acos(1 / math.sqrt(1 + math.pi * 100 / 1000)) / math.pi)
    assert 0.83 < kfo.one_step_ceiling(500) < 0.84


KFO_SMALL = ["--iterations", "40", "--eval-every", "20", "--seeds", "0", "1", "--test-tasks", "8", "--points", "200",
             "--adapt-points", "100", "--no-progress"]


def test_kfo_synthetic_all_methods(kfo, tmp_path):
    out = tmp_path / "iso"
    # stable learning rates for a 40-iteration smoke run (the paper's ones diverge: see docs/kfo.md)
    lrs = ["--lr", "linnet_maml=0.5,0.5", "--lr", "lr_klin=0.5,0.5", "--lr", "lr_kfc=0.5,0.5"]
    res = kfo.main(KFO_SMALL + lrs + ["--lr-backoff", "1", "0.1", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert set(saved) >= {"config", "analysis", "methods", "attempts"}
    assert saved["analysis"]["one_step_ceiling"] == pytest.approx(kfo.one_step_ceiling(100))
    assert [m["method"] for m in saved["methods"]] == list(kfo.METHODS)
    params = {"lr_maml": (100, 0), "linnet_maml": (100 * 64 + 64 * 64 * 2 + 64, 0),
              "lr_klin": (100, 10_001), "lr_kfc": (100, 20_002)}  # KFO A.1.1 meta-optimizer sizes
    for m in res["methods"]:
        assert (m["model_parameters"], m["meta_optimizer_parameters"]) == params[m["method"]]
        if m["diverged_at"] is not None:   # only allowed before the last back-off factor
            continue
        assert len(m["curve"]) == 2 and len(m["final_test_post_per_seed"]) == 2
        pre = torch.tensor([c["test_pre"] for c in m["curve"]]).mean()
        post = torch.tensor([c["test_post"] for c in m["curve"]]).mean()
        assert post > pre, m["method"]   # one adaptation step learns the task
        if m["method"] != "linnet_maml":  # LinNet's effective step starts tiny (product of small layers)
            assert post > pre + 0.05 and m["final_test_post_mean"] > 0.55, m["method"]


def test_kfo_synthetic_backoff_and_anisotropic_multistep(kfo, tmp_path):
    out = tmp_path / "aniso"
    res = kfo.main(KFO_SMALL + ["--setting", "anisotropic", "--condition", "100", "--inner-steps", "2",
                                "--methods", "lr_klin", "lr_kfc", "--lr", "lr_klin=1e4,1e4", "--lr", "lr_kfc=0.5,0.5",
                                "--lr-backoff", "1", "1e-4", "--out", str(out)])
    attempts = [a for a in res["attempts"] if a["method"] == "lr_klin"]
    assert attempts[0]["diverged_at"] is not None and attempts[0]["meta_lr"] == 1e4
    assert attempts[1]["diverged_at"] is None and attempts[1]["meta_lr"] == pytest.approx(1.0)
    assert "true_preconditioner_step_from_origin" in res["analysis"]
    for m in res["methods"]:
        assert m["diverged_at"] is None
        assert m["final_test_post_mean"] > m["final_test_pre_mean"] + 0.05, m["method"]


# ---------------------------------------------------------------------------------- few-shot
FS_SMALL = ["--dataset", "synthetic", "--hidden", "8", "--ways", "3", "--queries", "3", "--meta-batch", "1",
            "--inner-steps", "2", "--test-steps", "5", "--inner-lr", "0.5", "--eval-every", "2", "--eval-episodes", "2",
            "--test-episodes", "6", "--log-every", "1", "--checkpoint-every", "2", "--noise-dim", "4",
            "--kfc-depth", "2", "--no-progress"]


def test_fewshot_every_method(fewshot, tmp_path):
    out = tmp_path / "all"
    summary = fewshot.main(FS_SMALL + ["--iterations", "3", "--methods", *fewshot.METHODS,
                                       "--models", "scnn", "--out", str(out)])
    saved = json.loads((out / "summary.json").read_text())
    assert (out / "accuracy.png").exists() and (out / "sparsity.png").exists()
    assert [r["method"] for r in saved["runs"]] == list(fewshot.METHODS)
    for r in summary["runs"]:
        for key in ("test_accuracy", "test_ci95", "test_pre_accuracy", "model_parameters",
                    "meta_optimizer_parameters", "seconds_per_iteration", "history"):
            assert key in r, key
        assert 0.0 <= r["test_ci95"] < 1.0
        assert len(r["history"]["eval"]) == 2
        run = json.loads((out / "runs" / f"{r['name']}.json").read_text())
        post, pre = run["test_post_per_episode"], run["test_pre_per_episode"]
        assert len(post) == 6
        # learning: adaptation beats the unadapted model (deterministic: fixed seeds)
        assert sum(post) > sum(pre), r["name"]
        assert any(a > b for a, b in zip(post, pre))
        sparse = r["method"] in ("sparse-maml", "sparse-relu-maml", "sparse-maml-plus")
        assert (r["final_sparsity"] is not None) == sparse
        if sparse:
            hist = r["history"]["sparsity"]
            assert [h["iteration"] for h in hist] == [0, 1, 2, 3]
            assert set(hist[-1]["per_parameter"]) >= {"blocks.0.conv.weight", "head.weight"}
    counts = {r["method"]: r["meta_optimizer_parameters"] for r in summary["runs"]}
    n_model = summary["runs"][0]["model_parameters"]
    assert counts["fomaml"] == counts["anil"] == counts["maml"] == 0
    assert counts["sparse-maml"] == counts["sparse-relu-maml"] == counts["meta-sgd"] == n_model


@pytest.mark.parametrize("method", ["fomaml", "anil"])
def test_fewshot_first_order_sgd_episode_matches_open_mask_episode(fewshot, method):
    """FOMAML / ANIL with torch.optim.SGD + first_order_episode: the same first-order gradients
    (and restored theta) as the former MaskedSGD with open, frozen masks + episode / meta_backward."""
    import copy
    from types import SimpleNamespace

    import torch.nn.functional as F

    import sparse_optim as so

    args = fewshot.parse_args(FS_SMALL)
    torch.manual_seed(0)
    model = fewshot.build_model("scnn", 1, 28, args).double()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    ep = SimpleNamespace(support_x=torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64),
                         support_y=torch.arange(3),
                         query_x=torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64),
                         query_y=torch.arange(3).repeat(2))
    learner = fewshot.FirstOrderLearner(method, model, args, 0.5)
    assert type(learner.opt) is torch.optim.SGD
    learner.outer.step = lambda: None          # keep the meta-gradient in p.grad
    learner.train_step([ep], steps=3)

    named = [(n, p) for n, p in ref.named_parameters() if method == "fomaml" or n.startswith("head.")]
    inner = [p for _, p in named]
    opt = so.MaskedSGD(named, lr=0.5, mask_lr=0.0, mask_init="constant", mask_init_value=1.0)
    with opt.episode():
        for _ in range(3):
            grads = torch.autograd.grad(F.cross_entropy(ref(ep.support_x), ep.support_y), inner)
            for p, gp in zip(inner, grads):
                p.grad = gp
            opt.step()
        for p in inner:
            p.grad = None
        F.cross_entropy(ref(ep.query_x), ep.query_y).backward()
        opt.meta_backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0, msg=n)   # theta restored
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    for p in inner:
        assert p.grad is not None


@pytest.mark.parametrize("method", ["fomaml", "sparse-maml-plus", "kfc"])
def test_fewshot_checkpoint_resume_round_trip(fewshot, tmp_path, method):
    base = FS_SMALL + ["--methods", method, "--models", "scnn"]
    straight = fewshot.main(base + ["--iterations", "4", "--out", str(tmp_path / "a")])["runs"][0]
    fewshot.main(base + ["--iterations", "2", "--out", str(tmp_path / "b")])
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / f"{straight['name']}.pt", weights_only=False)
    assert ckpt["iteration"] == 2
    assert set(ckpt["learner"]) >= {"model", "outer"} and set(ckpt["rng"]) == {"torch", "sampler", "numpy", "python"}
    resumed = fewshot.main(base + ["--iterations", "4", "--resume", "--out", str(tmp_path / "b")])["runs"][0]
    assert resumed["resumed_at"] == 2
    run_a = json.loads((tmp_path / "a" / "runs" / f"{straight['name']}.json").read_text())
    run_b = json.loads((tmp_path / "b" / "runs" / f"{straight['name']}.json").read_text())
    assert run_b["test_post_per_episode"] == run_a["test_post_per_episode"]
    assert run_b["history"]["eval"] == run_a["history"]["eval"]
    assert run_b["history"]["sparsity"] == run_a["history"]["sparsity"]
    sa = torch.load(tmp_path / "a" / "checkpoints" / f"{straight['name']}.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoints" / f"{straight['name']}.pt", weights_only=False)
    for k, v in sa["learner"]["model"].items():
        assert torch.equal(v, sb["learner"]["model"][k]), k
    # a finished run is skipped by --resume
    again = fewshot.main(base + ["--iterations", "4", "--resume", "--out", str(tmp_path / "b")])["runs"][0]
    assert again["test_accuracy"] == resumed["test_accuracy"]


def test_fewshot_distributed_with_torchrun(tmp_path):
    """--distributed: two processes launched by torchrun (gloo, loopback) meta-train one model."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(EXAMPLES / "fewshot.py"), "--distributed", *FS_SMALL, "--iterations", "2",
           "--methods", "sparse-maml", "--models", "scnn", "--out", str(out)]
    env = dict(os.environ, SPARSE_OPTIM_BACKEND="reference", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["runs"]] == ["sparse-maml"]
    assert not list(out.glob("rank*"))  # only rank 0 writes
