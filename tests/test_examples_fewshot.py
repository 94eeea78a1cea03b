"""Smoke tests of examples/kfo_synthetic.py and examples/fewshot.py: every method for a few
meta-iterations at tiny sizes, JSON / PNG structure, learning (post-adaptation accuracy above
pre-adaptation accuracy, fixed seeds), validation model selection, checkpoint + --resume round
trip, and every preset end to end on small data generated in the datasets' real on-disk layouts."""
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
            "--inner-steps", "2", "--test-steps", "5", "--inner-lr", "0.5", "--val-every", "2", "--val-episodes", "3",
            "--test-episodes", "6", "--log-every", "1", "--checkpoint-every", "2", "--noise-dim", "4",
            "--kfc-depth", "2", "--upper-bound-steps", "20", "--phase-iterations", "2", "--no-progress"]


def test_fewshot_every_method(fewshot, tmp_path):
    out = tmp_path / "all"
    methods = [m for m in fewshot.METHODS if m != "prune"]
    summary = fewshot.main(FS_SMALL + ["--iterations", "3", "--methods", *methods, "--models", "scnn",
                                       "--out", str(out)])
    saved = json.loads((out / "summary.json").read_text())
    assert (out / "validation.png").exists() and (out / "sparsity.png").exists()
    assert [r["method"] for r in saved["runs"]] == methods
    for r in summary["runs"]:
        for key in ("test_accuracy", "test_ci95", "test_pre_accuracy", "model_parameters", "best_iteration",
                    "best_val_accuracy", "meta_optimizer_parameters", "seconds_per_iteration", "history"):
            assert key in r, key
        assert 0.0 <= r["test_ci95"] < 1.0
        run = json.loads((out / "runs" / f"{r['name']}.json").read_text())
        post, pre = run["test_post_per_episode"], run["test_pre_per_episode"]
        assert len(post) == 6
        # learning: adaptation beats the unadapted model (deterministic: fixed seeds)
        assert sum(post) > sum(pre), r["name"]
        if r["method"] == "upper-bound":
            assert r["history"]["val"] == [] and r["best_iteration"] is None
            continue
        # validation at 2 and at the end; the tested model is the best validation checkpoint
        its = [v["iteration"] for v in r["history"]["val"]]
        assert its == ([4, 5] if r["method"] == "two-phase" else [2, 3])
        best = max(r["history"]["val"], key=lambda v: v["accuracy"])
        assert r["best_val_accuracy"] == best["accuracy"] and r["best_iteration"] == best["iteration"]
        sparse = r["method"] in ("sparse-maml", "sparse-relu-maml", "sparse-maml-plus", "two-phase")
        assert (r["final_sparsity"] is not None) == sparse
        if sparse:
            hist = r["history"]["sparsity"]
            assert set(hist[-1]["per_parameter"]) >= {"blocks.0.conv.weight", "head.weight"}
    counts = {r["method"]: r["meta_optimizer_parameters"] for r in summary["runs"]}
    n_model = summary["runs"][0]["model_parameters"]
    assert counts["fomaml"] == counts["anil"] == counts["boil"] == counts["maml"] == 0
    assert counts["sparse-maml"] == counts["sparse-relu-maml"] == counts["meta-sgd"] == counts["exp-maml"] == n_model
    assert counts["cfc"] == n_model   # rank 1, depth 1: one column per coordinate


def test_fewshot_selection_tests_the_best_checkpoint(fewshot, tmp_path):
    """The test accuracy is that of the best-validation checkpoint, not of the last model."""
    import copy

    args = FS_SMALL + ["--iterations", "6", "--methods", "fomaml", "--models", "scnn", "--val-every", "1",
                       "--inner-lr", "3.0", "--checkpoint-every", "0"]
    r = fewshot.main(args + ["--out", str(tmp_path / "a")])["runs"][0]
    vals = [v["accuracy"] for v in r["history"]["val"]]
    assert len(vals) == 6 and r["best_val_accuracy"] == max(vals)
    cfg = fewshot.make_configs(fewshot.parse_args(args))[0]
    data = fewshot.load_data("synthetic", None)
    torch.manual_seed(cfg["seed"])
    learner = fewshot.make_learner(cfg, lambda: fewshot.build_model(cfg, data["channels"], data["size"]))
    sampler = fewshot.make_sampler(data["train"], cfg, seed=cfg["seed"])
    states = []
    for it in range(6):
        learner.train_step([sampler.sample()], cfg["inner_steps"])
        states.append(copy.deepcopy(learner.state_dict()))
    learner.load_state_dict(states[r["best_iteration"] - 1])
    _, probs, labels = fewshot.episode_probs(learner, data["test"], cfg, 6, cfg["test_steps"], fewshot.TEST_SEED)
    run = json.loads((tmp_path / "a" / "runs" / f"{r['name']}.json").read_text())
    assert fewshot.accuracies(probs, labels) == run["test_post_per_episode"]


def test_fewshot_official_mask_init_and_gradient_scale(fewshot):
    """Official sparse-MAML mask logits: centred, the requested fraction frozen; the official
    mask's gradient is half the library's (0.5 (sign(m) + 1), identity backward)."""
    from types import SimpleNamespace

    import sparse_optim as so

    base = fewshot.resolve(dict(method="sparse-maml", hidden=16, init_sparsity=0.3, mask_init="official",
                                inner_lr=0.5, inner_steps=2, ways=3))
    torch.manual_seed(0)
    learner = fewshot.FirstOrderLearner("sparse-maml", fewshot.build_model(base, 1, 28), base)
    for name, m in learner.opt.named_meta_parameters():
        frozen = (m < 0).float().mean().item()
        if m.numel() >= 1000:
            assert abs(frozen - 0.3) < 0.03, name
        bound = (6.0 / m[0].numel()) ** 0.5 if m.dim() > 1 else 0.5
        assert m.max().item() <= 2 * bound
    g = torch.Generator().manual_seed(1)
    ep = SimpleNamespace(support_x=torch.randn(3, 1, 28, 28, generator=g), support_y=torch.arange(3),
                         query_x=torch.randn(6, 1, 28, 28, generator=g), query_y=torch.arange(3).repeat(2))
    grads = {}
    for scale in ("library", "official"):
        cfg = dict(base, mask_grad=scale)
        torch.manual_seed(0)
        learner = fewshot.FirstOrderLearner("sparse-maml", fewshot.build_model(cfg, 1, 28), cfg)
        learner.outer.step = lambda: None
        learner.train_step([ep], steps=2)
        grads[scale] = [t.grad.clone() for t in learner.meta_params]
        assert isinstance(learner.opt, so.MaskedSGD)
    assert any(a.abs().sum() > 0 for a in grads["library"])
    for a, b in zip(grads["library"], grads["official"]):
        torch.testing.assert_close(b, 0.5 * a)


def test_fewshot_exp_maml_matches_autograd(fewshot):
    """exp-MAML on MetaSGD + chain rule = autograd through p <- p - exp(m) * g (g detached)."""
    from types import SimpleNamespace

    cfg = fewshot.resolve(dict(method="exp-maml", hidden=4, inner_lr=0.3, inner_steps=3, ways=3, model="scnn"))
    torch.manual_seed(0)
    model = fewshot.build_model(cfg, 1, 28).double()
    learner = fewshot.FirstOrderLearner("exp-maml", model, cfg)
    with torch.no_grad():
        for m in learner.exp_logits:
            m.copy_(torch.randn_like(m) * 0.3 + m)
    g = torch.Generator().manual_seed(1)
    ep = SimpleNamespace(support_x=torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64),
                         support_y=torch.arange(3),
                         query_x=torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64),
                         query_y=torch.arange(3).repeat(2))
    logits = [m.detach().double().clone().requires_grad_(True) for m in learner.exp_logits]
    names = [n for n, _ in model.named_parameters()]
    fast = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    theta = dict(fast)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model, fast, (ep.support_x,)), ep.support_y)
        gr = torch.autograd.grad(loss, [fast[n] for n in names])
        fast = {n: fast[n] - m.exp() * gi.detach() for n, m, gi in zip(names, logits, gr)}
    out = torch.nn.functional.cross_entropy(torch.func.functional_call(model, fast, (ep.query_x,)), ep.query_y)
    ref_m = torch.autograd.grad(out, logits)
    learner.exp_logits = [m.double().detach().requires_grad_(True) for m in logits]
    learner.meta_params = learner.exp_logits
    for r in learner.opt.meta_parameters():
        r.data = r.data.double()
    learner.outer.step = lambda: None
    learner.train_step([ep], steps=3)
    for m, ref in zip(learner.exp_logits, ref_m):
        torch.testing.assert_close(m.grad, ref)
    del theta


@pytest.mark.parametrize("method", ["fomaml", "anil", "boil"])
def test_fewshot_first_order_sgd_episode_matches_open_mask_episode(fewshot, method):
    """FOMAML / ANIL / BOIL with torch.optim.SGD + first_order_episode: the same first-order gradients
    (and restored theta) as MaskedSGD with open, frozen masks + episode / meta_backward on the same
    inner parameters (ANIL: the head; BOIL: all but the head)."""
    import copy
    from types import SimpleNamespace

    import torch.nn.functional as F

    import sparse_optim as so

    cfg = fewshot.resolve(dict(method=method, hidden=8, ways=3, model="scnn", inner_lr=0.5))
    torch.manual_seed(0)
    model = fewshot.build_model(cfg, 1, 28).double()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    ep = SimpleNamespace(support_x=torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64),
                         support_y=torch.arange(3),
                         query_x=torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64),
                         query_y=torch.arange(3).repeat(2))
    learner = fewshot.FirstOrderLearner(method, model, cfg)
    assert type(learner.opt) is torch.optim.SGD
    learner.outer.step = lambda: None          # keep the meta-gradient in p.grad
    learner.train_step([ep], steps=3)

    keep = {"fomaml": lambda n: True, "anil": lambda n: n.startswith("head."),
            "boil": lambda n: not n.startswith("head.")}[method]
    named = [(n, p) for n, p in ref.named_parameters() if keep(n)]
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


@pytest.mark.parametrize("method", ["fomaml", "sparse-maml-plus", "kfc"])
def test_fewshot_checkpoint_resume_round_trip(fewshot, tmp_path, method):
    base = FS_SMALL + ["--methods", method, "--models", "scnn"]
    straight = fewshot.main(base + ["--iterations", "4", "--out", str(tmp_path / "a")])["runs"][0]
    fewshot.main(base + ["--iterations", "2", "--out", str(tmp_path / "b")])
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / f"{straight['name']}.pt", weights_only=False)
    assert ckpt["iteration"] == 2 and len(ckpt["best"]) == 1
    assert set(ckpt["learner"]) >= {"model", "outer"} and set(ckpt["rng"]) == {"torch", "sampler", "numpy", "python"}
    resumed = fewshot.main(base + ["--iterations", "4", "--resume", "--out", str(tmp_path / "b")])["runs"]
    resumed = next(r for r in resumed if r["name"] == straight["name"])
    assert resumed["resumed_at"] == 2
    run_a = json.loads((tmp_path / "a" / "runs" / f"{straight['name']}.json").read_text())
    run_b = json.loads((tmp_path / "b" / "runs" / f"{straight['name']}.json").read_text())
    assert run_b["test_post_per_episode"] == run_a["test_post_per_episode"]
    assert run_b["history"]["val"] == run_a["history"]["val"]
    assert run_b["history"]["sparsity"] == run_a["history"]["sparsity"]
    sa = torch.load(tmp_path / "a" / "checkpoints" / f"{straight['name']}.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoints" / f"{straight['name']}.pt", weights_only=False)
    for k, v in sa["learner"]["model"].items():
        assert torch.equal(v, sb["learner"]["model"][k]), k
    again = fewshot.main(base + ["--iterations", "4", "--resume", "--out", str(tmp_path / "b")])["runs"]
    assert next(r for r in again if r["name"] == straight["name"])["test_accuracy"] == resumed["test_accuracy"]


def test_fewshot_outputs_keyed_by_run_and_test_steps_per_k(fewshot, tmp_path):
    out = tmp_path / "o"
    i = FS_SMALL.index("--inner-steps")
    assert FS_SMALL[i + 2] == "--test-steps"
    small = FS_SMALL[:i] + FS_SMALL[i + 4:]
    s1 = fewshot.main(small + ["--iterations", "1", "--methods", "fomaml", "--models", "scnn",
                               "--inner-steps", "1", "2", "--test-steps", "same", "--out", str(out)])
    assert sorted(r["name"].split("_")[4] for r in s1["runs"]) == ["K1-1", "K2-2"]
    assert (out / "sweep.png").exists()
    s2 = fewshot.main(small + ["--iterations", "1", "--methods", "anil", "--models", "scnn", "--inner-steps", "1", "2",
                               "--test-steps", "3", "4", "--out", str(out)])
    assert sorted(r["name"].split("_")[4] for r in s2["runs"] if r["method"] == "anil") == ["K1-3", "K2-4"]
    saved = json.loads((out / "summary.json").read_text())
    assert sorted(r["method"] for r in saved["runs"]) == ["anil", "anil", "fomaml", "fomaml"]  # earlier runs kept
    assert saved["this_invocation"] == [r["name"] for r in s2["runs"] if r["method"] == "anil"]
    assert not (out / "sparsity.png").exists()
    fewshot.main(small + ["--iterations", "1", "--methods", "sparse-maml", "--models", "scnn", "--out", str(out)])
    assert (out / "sparsity.png").exists()
    for p in (out / "runs").glob("sparse-maml*"):
        p.unlink()
    fewshot.main(small + ["--iterations", "1", "--methods", "fomaml", "--models", "scnn", "--out", str(out)])
    assert not (out / "sparsity.png").exists()      # no stale plot once its runs are gone
    with pytest.raises(SystemExit, match="test-steps"):
        fewshot.main(small + ["--inner-steps", "1", "2", "--test-steps", "1", "2", "3", "--out", str(out)])


def test_fewshot_list_presets(fewshot, capsys):
    fewshot.main(["--list-presets"])
    text = capsys.readouterr().out
    for name in fewshot.fewshot_presets.PRESETS:
        assert name in text
    with pytest.raises(SystemExit, match="unknown preset"):
        fewshot.main(["--preset", "table-99"])


def test_presets_cite_their_values(fewshot):
    presets = fewshot.fewshot_presets.PRESETS
    expected = {"sparse-maml-table1-1shot", "sparse-maml-table1-5shot", "sparse-maml-fig2-steps",
                "sparse-maml-figS2-steps-1shot", "sparse-maml-fig2-lr", "sparse-maml-fig1-sparsity",
                "sparse-maml-figS2-width", "sparse-maml-table2-resnet12-1shot", "sparse-maml-table2-resnet12-5shot",
                "sparse-maml-table4-cross-domain-1shot", "sparse-maml-table4-cross-domain-5shot",
                "sparse-maml-tableS3", "sparse-maml-tableS4-two-phase", "kfo-table2-omniglot", "kfo-table2-cifar-fs",
                "kfo-table2-mini-imagenet", "kfo-table1-omniglot-linear", "kfo-fig3-layers-omniglot",
                "kfo-fig3-layers-cifar-fs", "kfo-tableA1-omniglot", "kfo-tableA1-cifar-fs", "kfo-tableA1-mini-imagenet",
                "kfo-figA1-width", "offline-digits-sparse-family"}
    assert set(presets) == expected
    for p in presets.values():
        assert p.cites and all(isinstance(v, str) and v for v in p.cites.values()), p.name
        for cfg in p.expand():
            assert set(cfg) <= set(fewshot.DEFAULTS) | {"method"}, (p.name, set(cfg) - set(fewshot.DEFAULTS))
            fewshot.resolve(cfg)
    t1 = {r["method"]: r for r in presets["sparse-maml-table1-5shot"].runs}
    assert presets["sparse-maml-table1-5shot"].base["meta_batch"] == 2
    assert (t1["sparse-relu-maml"]["inner_lr"], t1["sparse-maml"]["inner_lr"], t1["sparse-maml-plus"]["inner_lr"]) == (
        0.1, 0.25, 0.1)                                                      # Table S2
    assert t1["sparse-maml-plus"]["iterations"] == 60_000
    kfo = {r["method"]: r for r in presets["kfo-table2-omniglot"].runs}
    assert (kfo["maml"]["inner_lr"], kfo["kfc"]["inner_lr"]) == (0.8, 0.5)   # KFO A.1.2
    cd = presets["sparse-maml-table4-cross-domain-5shot"].base["cross_domain"]
    assert [k for _, k in cd] == [100, 100, 100]


# ---------------------------------------------------------------------------------- presets end to end
def _make_data_root(root: Path) -> Path:
    """Small copies of every dataset in its real layout under one --data-root."""
    import test_data_fewshot as td

    from sparse_optim.data import CARS_TEST_CLASSES

    # miniImageNet (csv layout), 10 classes per split (KFO: 10-way), 6 images each
    mini = root / "mini-imagenet"
    (mini / "images").mkdir(parents=True)
    from PIL import Image
    for si, split in enumerate(("train", "val", "test")):
        rows = []
        for c in range(10):
            wnid = f"n{si}{c:07d}"
            for i in range(6):
                fname = f"{wnid}{i:08d}.jpg"
                Image.fromarray(td._class_image(c + 10 * si, i, (20, 20))).save(mini / "images" / fname)
                rows.append(f"{fname},{wnid}")
        (mini / f"{split}.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    td.make_omniglot(root / "omniglot", [("images_background", "Latin", 24), ("images_evaluation", "Greek", 24)],
                     n_draw=6)
    td.make_cifar100(root / "cifar-fs", n_train=3, n_test=3)
    td.make_tiered(root / "tiered-imagenet", "pickle", classes=(5, 5, 5), per_class=6)
    td.make_cub(root / "cub", ids=(1, 2, 4, 8, 12, 16, 20), per_class=6)
    td.make_cars(root / "cars", "devkit", classes=list(CARS_TEST_CLASSES[:5]), per_class=6)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    pytest.importorskip("PIL")
    pytest.importorskip("scipy")
    return _make_data_root(tmp_path_factory.mktemp("data"))


SMOKE = ["--iterations", "1", "--val-every", "1", "--val-episodes", "1", "--test-episodes", "2", "--queries", "1",
         "--test-queries", "1", "--seeds", "0", "--meta-batch", "1", "--hidden", "4", "--noise-dim", "4",
         "--kfc-depth", "2", "--upper-bound-steps", "3", "--phase-iterations", "1", "--resnet-channels", "4", "4", "4",
         "4", "--omniglot-train", "20", "--omniglot-val", "12", "--checkpoint-every", "0", "--no-progress"]


def _cars_small(fewshot, monkeypatch):
    """The generated Cars copy holds 5 of the 49 test classes: let the loader accept it."""
    import sparse_optim.data.cross_domain as cd

    monkeypatch.setattr(cd, "CARS_TEST_CLASSES", cd.CARS_TEST_CLASSES[:5])


def _preset_names():
    import sys

    sys.path.insert(0, str(EXAMPLES))
    import fewshot_presets

    return sorted(fewshot_presets.PRESETS)


@pytest.mark.parametrize("name", _preset_names())
def test_preset_end_to_end(fewshot, data_root, tmp_path, monkeypatch, name):
    preset = fewshot.fewshot_presets.PRESETS[name]
    _cars_small(fewshot, monkeypatch)
    extra = ["--image-size", "16"] if set(preset.datasets) & {"mini-imagenet", "tiered-imagenet", "cub", "cars"} else []
    if preset.base.get("dataset") == "kfo-synthetic":
        extra = ["--shots", "20", "--queries", "20", "--test-queries", "20"]
    smoke = list(SMOKE)
    if any("hidden" in r for r in preset.runs):
        i = smoke.index("--hidden")
        del smoke[i:i + 2]
    if preset.base.get("ensemble", 1) > 1:   # 3 validations -> the 3 best checkpoints exist
        smoke[smoke.index("--iterations") + 1] = "3"
    short_k = not any("inner_steps" in r or "test_steps" in r for r in preset.runs)
    if short_k:   # the preset's K (up to 35 / 100) is checked in test_presets_cite_their_values
        smoke += ["--inner-steps", "2", "--test-steps", "3"]
    out = tmp_path / name
    summary = fewshot.main(["--preset", name, "--data-root", str(data_root), "--out", str(out)] + smoke + extra)
    runs = summary["runs"]
    assert len(runs) == len(preset.runs)
    assert json.loads((out / "summary.json").read_text())["preset"] == name
    for spec, r in zip(preset.runs, runs):
        # the preset's values reach the run (those the smoke overrides leave alone)
        for key in ("method", "inner_lr", "init_sparsity", "model", "cfc_rank", "bias",
                    "transductive_bn", "linnet_hidden", "num_layers", "prune_threshold", "meta_lr"):
            want = spec.get(key, preset.base.get(key))
            if want is not None and key not in ("linnet_hidden",):
                assert r[key] == want, (name, key)
        ts = 3 if short_k else spec.get("test_steps", preset.base.get("test_steps"))
        assert r["test_steps"] == (r["inner_steps"] if ts == "same" else ts if ts is not None else r["test_steps"])
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_episodes"] == 2
        assert (out / "runs" / f"{r['name']}.json").exists()
        if r["method"] != "upper-bound":
            assert r["history"]["val"] and r["best_iteration"] in (1, 2, 3)
        if not short_k:
            assert r["inner_steps"] == spec.get("inner_steps", preset.base.get("inner_steps"))
        if preset.base.get("ensemble", 1) > 1:
            assert sorted(r["ensemble_members"]) == [1, 2, 3] and 0.0 <= r["ensemble_accuracy"] <= 1.0
        targets = preset.base.get("cross_domain", [])
        assert {t: v["test_steps"] for t, v in r["cross_domain_results"].items()} == dict(targets)
    assert (out / "validation.png").exists() or all(r["method"] == "upper-bound" for r in runs)


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
