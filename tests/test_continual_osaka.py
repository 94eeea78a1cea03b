"""The OSAKA benchmark pieces (sparse_optim.continual.osaka) and examples/sparse_cmaml.py.

Stream statistics, the boundary detection, the tied per-tensor C-MAML rates against their
first-order definition, and smoke runs: the real protocol (``--data-root``) on small data
written in the on-disk formats torchvision reads (MNIST / FashionMNIST raw idx files, the
extracted Omniglot PNG folders), and the offline default.
"""
import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparse_optim.continual import osaka
from sparse_optim.models import ConvNet4

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load_example():
    spec = importlib.util.spec_from_file_location("_example_sparse_cmaml_osaka", ROOT / "examples" / "sparse_cmaml.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _constant_sources(n_classes=(20, 10, 10), n_per=6):
    """Sources whose every image is filled with a code identifying (source, class)."""
    out = {}
    for s, (name, n) in enumerate(zip(osaka.OSAKA_SOURCES, n_classes)):
        code = torch.arange(n, dtype=torch.float32) + 100 * s
        out[name] = code.view(n, 1, 1, 1, 1).expand(n, n_per, 1, 2, 2).clone()
    return out


# ----------------------------------------------------------------------------- stream
def test_stream_switch_probability_and_source_frequencies():
    src = _constant_sources()
    stream = osaka.OSAKAStream(src, steps=20000, p=0.9, n_way=10, n_shots=1, seed=3)
    switches = [s for _, _, s in stream.schedule]
    assert switches[0] is True
    rate = sum(switches[1:]) / (len(switches) - 1)
    assert abs(rate - 0.1) < 4 * math.sqrt(0.09 / 20000)          # 1 - p
    drawn = np.array([src_i for src_i, _, s in stream.schedule if s])
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(freq, osaka.OSAKA_SOURCE_PROBS, atol=0.04), freq
    # a switch to the same source still counts (a new set of classes)
    same = sum(1 for (a, _, s), (b, _, _) in zip(stream.schedule[1:], stream.schedule[:-1]) if s and a == b)
    assert same > 0.3 * sum(switches[1:])
    assert stream.switch_steps() == [t for t, s in enumerate(switches) if s and t > 0]


@pytest.mark.parametrize("p,expected", [(1.0, 0), (0.0, 49)])
def test_stream_extreme_p(p, expected):
    stream = osaka.OSAKAStream(_constant_sources(), steps=50, p=p, seed=0)
    assert len(stream.switch_steps()) == expected


def test_stream_batches_come_from_the_task_classes():
    src = _constant_sources()
    stream = osaka.OSAKAStream(src, steps=300, p=0.8, n_way=10, n_shots=3, seed=1)
    prev = None
    for t, step in enumerate(stream):
        assert step.x.shape == (30, 1, 2, 2) and step.y.tolist() == [k for k in range(10) for _ in range(3)]
        s = osaka.OSAKA_SOURCES.index(step.source)
        assert len(set(step.classes.tolist())) == 10                      # distinct classes
        codes = step.x[:, 0, 0, 0] - 100 * s                               # the class each image came from
        assert torch.equal(codes.long(), step.classes[step.y])             # label k <-> classes[k]
        if prev is not None and not step.task_switch:
            assert step.source == prev.source and torch.equal(step.classes, prev.classes)
        prev = step
    # MNIST-like sources (10 classes): every task is a permutation of the 10 digits
    perms = [c for i, c, _ in stream.schedule if osaka.OSAKA_SOURCES[i] == "mnist"]
    assert perms and all(sorted(c.tolist()) == list(range(10)) for c in perms)
    assert any(c.tolist() != list(range(10)) for c in perms)


def test_stream_is_reproducible_and_validates():
    src = _constant_sources()
    a = [s.x for s in osaka.OSAKAStream(src, 40, 0.9, seed=5)]
    b = [s.x for s in osaka.OSAKAStream(src, 40, 0.9, seed=5)]
    c = [s.x for s in osaka.OSAKAStream(src, 40, 0.9, seed=6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))
    with pytest.raises(ValueError):
        osaka.OSAKAStream(src, 10, 1.5)
    with pytest.raises(ValueError):
        osaka.OSAKAStream(src, 10, 0.9, probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        osaka.OSAKAStream(src, 10, 0.9, n_way=11)


def test_order_and_split():
    x = torch.arange(7).float().view(7, 1)
    y = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    out = osaka.order_and_split(x, y)
    assert out.shape == (3, 2, 1)
    assert out[:, :, 0].tolist() == [[1, 3], [2, 6], [0, 4]]          # by label, truncated to 2, in order


# ----------------------------------------------------------------------------- detection, UM
def test_detect_task_boundary():
    assert osaka.detect_task_boundary(3.0, 0.9, 2.0)
    assert osaka.detect_task_boundary(3.0, 1.0, 2.0)                  # <= : equality detects
    assert not osaka.detect_task_boundary(3.0, 1.1, 2.0)
    assert not osaka.detect_task_boundary(9.0, 0.0, -1.0)             # off (OSAKA: -1)
    assert not osaka.detect_task_boundary(9e9, 0.0, 1000.0)           # off (OSAKA: >= 100)


def test_update_modulation():
    assert osaka.update_modulation(0.0, 0.25) == 0.0
    assert osaka.update_modulation(2.0, 0.25) == pytest.approx(1 - math.exp(-0.5))
    assert osaka.update_modulation(50.0, 1000.0) == pytest.approx(1.0)


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return ConvNet4(in_channels=1, num_classes=10, hidden=4, image_size=28, init="default")


def _pattern_task(seed, n_shots=3):
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(10, 1, 28, 28, generator=g) > 0.7).float()
    def batch(labels_perm=None, s=0):
        gg = torch.Generator().manual_seed(1000 + s)
        y = torch.arange(10).repeat_interleave(n_shots)
        x = protos[y] + 0.1 * torch.randn(len(y), 1, 28, 28, generator=gg)
        return x, (y if labels_perm is None else labels_perm[y])
    return batch


def test_inner_parameters_exclude_batchnorm():
    names = [n for n, _ in osaka.inner_parameters(_tiny_cnn())]
    assert len(names) == 10 and not any("norm" in n for n in names)


def test_boundary_detected_when_labels_change():
    batch = _pattern_task(0)
    cm = osaka.ContinualMAML(_tiny_cnn(), "sparse_cmaml", alpha=0.3, gamma=0.01, meta_lr=1e-3, num_steps=3,
                             tbd_threshold=0.5, um_lambda=0.25)
    for s in range(25):
        out = cm.observe(*batch(s=s))
    assert out["accuracy"] > 0.8                        # the stationary task is learned online (PAP)
    updates = len(cm.um)
    new = cm.observe(*batch(torch.roll(torch.arange(10), 3), s=99))     # same images, new labels
    assert new["accuracy"] < 0.3 and new["tbd"] and cm.detected[-1] == 25
    assert len(cm.um) == updates + 1 and cm.buffer == []               # buffer consumed by a meta-update
    assert cm.last_tbd


# ----------------------------------------------------------------------------- tied C-MAML rates
def test_cmaml_rates_are_tied_first_order_scalars():
    alpha, gamma = 0.1, 0.01
    model = _tiny_cnn(1)
    cm = osaka.ContinualMAML(model, "cmaml", alpha=alpha, gamma=gamma, meta_lr=1e-3, num_steps=1)
    batch = _pattern_task(2, n_shots=2)
    xs, ys = batch(s=1)
    xq, yq = batch(s=2)
    # reference: phi = theta - alpha g_s; dL/dalpha_i = -sum(g_out_i * g_s_i) for each tensor i
    names = [n for n, _ in osaka.inner_parameters(model)]
    ref_model = _tiny_cnn(1)
    params = dict(ref_model.named_parameters())
    gs = torch.autograd.grad(F.cross_entropy(ref_model(xs), ys), [params[n] for n in names])
    with torch.no_grad():
        for n, g in zip(names, gs):
            params[n].sub_(alpha * g)
    go = torch.autograd.grad(F.cross_entropy(ref_model(xq), yq), [params[n] for n in names])
    ref = [-(a * b).sum().item() for a, b in zip(go, gs)]
    cm.meta_update([(xs, ys, xq, yq)], modulate=False)
    rates = cm.rates()
    assert list(rates) == names
    for m in cm.meta:                                               # one value per tensor
        assert torch.all(m == m.flatten()[0])
    for n, g in zip(names, ref):                                    # Adam's first step: -gamma * sign(grad)
        if abs(g) > 1e-6:
            assert rates[n] == pytest.approx(alpha - gamma * math.copysign(1.0, g), abs=1e-4), n


# ----------------------------------------------------------------------------- real on-disk formats
def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = {3: 0x0803, 1: 0x0801}[arr.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in arr.shape:
            f.write(struct.pack(">I", d))
        f.write(arr.astype(np.uint8).tobytes())


def _write_mnist_like(root: Path, folder: str, n_train: int, seed: int) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", 20)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        imgs = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):                      # a class-specific bright bar
            imgs[i, 2 + 2 * c: 4 + 2 * c, 4:24] = 250
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def _write_omniglot(root: Path, layout) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for subset, alphabets in layout.items():
        for a, n_chars in enumerate(alphabets):
            for c in range(n_chars):
                d = root / "omniglot-py" / subset / f"Alphabet_{a}" / f"character{c + 1:02d}"
                d.mkdir(parents=True)
                proto = rng.random((105, 105)) > 0.9
                for k in range(20):
                    img = np.where(proto & (rng.random((105, 105)) > 0.1), 0, 255).astype(np.uint8)
                    Image.fromarray(img, mode="L").save(d / f"{1000 + c}_{k + 1:02d}.png")


@pytest.fixture(scope="module")
def osaka_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("osaka_data")
    _write_mnist_like(root, "MNIST", 130, seed=1)
    _write_mnist_like(root, "FashionMNIST", 110, seed=2)
    _write_omniglot(root, {"images_background": [8, 6], "images_evaluation": [8]})   # 22 characters
    return root


def test_load_osaka_data_reads_the_real_formats(osaka_root):
    data = osaka.load_osaka_data(osaka_root, download=False, n_pretrain=12, n_val=10)
    om, mn, fa = (data.sources[k] for k in osaka.OSAKA_SOURCES)
    assert om.shape == (22, 20, 1, 28, 28) and mn.shape == (10, 13, 1, 28, 28) and fa.shape == (10, 11, 1, 28, 28)
    for t in (om, mn, fa):
        assert t.dtype == torch.float32 and 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert float(om.mean()) > 0.5                       # white background = 1 (OSAKA: no inversion)
    # class c of MNIST has its bright bar at rows 2 + 2c (labels were read and grouped correctly)
    for c in range(10):
        assert float(mn[c, :, 0, 2 + 2 * c, 10].min()) > 0.9
    assert data.pretrain_train[0].shape == (12, 10, 1, 28, 28) and data.pretrain_val[1].shape == (10, 10, 1, 28, 28)
    assert torch.equal(data.pretrain_train[0][0], om[0, :10]) and torch.equal(data.pretrain_val[1][0], om[12, 10:])
    with pytest.raises((RuntimeError, FileNotFoundError)):
        osaka.load_osaka_data(osaka_root / "missing", download=False)


def test_data_root_smoke(osaka_root, tmp_path):
    mod = _load_example()
    out = tmp_path / "res"
    res = mod.main(["--data-root", str(osaka_root), "--p", "0.9", "--seeds", "0", "--steps", "30",
                    "--methods", *mod.OSAKA_METHODS, "--pretrain-epochs", "2", "--pretrain-batches", "2",
                    "--val-batches", "1", "--hidden", "8", "--num-steps", "2", "--n-pretrain", "12",
                    "--n-val", "10", "--shots-osaka", "2", "--query-shots", "2", "--sparsity-every", "10",
                    "--out", str(out), "--no-progress"])
    jp = out / "sparse_cmaml_osaka_p0.9.json"
    assert res["files"][0] == str(jp)
    data = json.loads(jp.read_text())
    assert data["config"]["setting"] == "osaka" and data["config"]["data_shapes"]["mnist"] == [10, 13, 1, 28, 28]
    r = data["results"]["0.9"]
    assert set(r["summary"]) == set(mod.OSAKA_METHODS)
    stream = osaka.OSAKAStream(osaka.load_osaka_data(osaka_root, n_pretrain=12, n_val=10).sources, 30, 0.9,
                               n_shots=2, seed=0)
    for m, (run,) in r["runs"].items():
        assert 0.0 <= run["cumulative_accuracy"] <= 1.0
        assert len(run["accuracy_curve"]) == 3 and run["switches_true"] == len(stream.switch_steps())
        assert run["pretraining"]["epochs"] >= 1 and 0 <= run["pretraining"]["best_val_accuracy"] <= 1
        assert set(run["per_source_accuracy"]) == set(osaka.OSAKA_SOURCES)
    assert r["hparams"]["cmaml"]["alpha"] == 0.1 and r["hparams"]["sparse_cmaml"]["alpha"] == 0.3   # Table S9
    assert r["hparams"]["cmaml"]["num_steps"] == 2 and r["hparams"]["cmaml"]["tbd_threshold"] == 2.0
    sp = r["runs"]["sparse_cmaml"][0]
    assert 0 < sp["final_sparsity"]["overall"] < 1 and len(sp["sparsity_trace"]) == 3
    rates = r["runs"]["cmaml"][0]["learned_rates"]
    assert len(rates) == 10 and any(abs(v - 0.1) > 1e-6 for v in rates.values())   # learned, per tensor
    assert r["runs"]["finetune"][0]["final_sparsity"] is None
    assert "| sparse-C-MAML |" in data["readme_table"] and "86.3" in data["readme_table"]
    assert (out / "sparse_cmaml_osaka_p0.9.png").stat().st_size > 1000
    assert (out / "sparse_cmaml_osaka_p0.9.md").read_text().startswith("| method |")


def test_offline_default_smoke(tmp_path):
    mod = _load_example()
    for p in ("0.9", "0.98"):
        mod.main(["--p", p, "--seeds", "0", "--steps", "60", "--out", str(tmp_path), "--no-progress"])
    a = json.loads((tmp_path / "sparse_cmaml_offline_p0.9.json").read_text())
    b = json.loads((tmp_path / "sparse_cmaml_offline_p0.98.json").read_text())     # keyed: no overwrite
    assert a["config"]["setting"] == "offline" and list(a["results"]) == ["0.9"] and list(b["results"]) == ["0.98"]
    assert set(a["results"]["0.9"]["summary"]) == set(mod.DEFAULT_METHODS)
    for s in a["results"]["0.9"]["summary"].values():
        assert 0.1 < s["cumulative_accuracy_mean"] <= 1.0
    assert "72.7" in b["readme_table"] and "22.1" in a["readme_table"]
