"""Image task streams (CIFAR-100 / TinyImageNet / Split-CIFAR-10) and examples/continual_vision.py,
on small data written in the datasets' real on-disk formats."""
import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_optim.continual import (ImageSplits, augment_batch, class_split_tasks, load_cifar,
                                    load_tiny_imagenet)
from sparse_optim.models import LaMAMLConvNet

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("_example_continual_vision", ROOT / "examples" / "continual_vision.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _cifar_dict(n_classes, per_class, rng, key):
    y = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(y)
    # class c is brighter in channel c % 3, so a few steps can learn something
    x = rng.integers(0, 80, (len(y), 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(y):
        x[i, c % 3] += np.uint8(100 + (c // 3) % 50)
    return {"data": x.reshape(len(y), -1), key: y.tolist(), "batch_label": "synthetic"}


def write_cifar100(root: Path, per_class=10, test_per_class=2):
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", per_class), ("test", test_per_class)):
        with open(folder / name, "wb") as f:
            pickle.dump(_cifar_dict(100, n, rng, "fine_labels"), f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


def write_cifar10(root: Path, per_class=10, test_per_class=4):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_dict(10, per_class // 5 or 1, rng, "labels"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_cifar_dict(10, test_per_class, rng, "labels"), f)


def write_tiny_imagenet(root: Path, classes=200, train_per_class=3, val_per_class=2):
    from PIL import Image

    rng = np.random.default_rng(2)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for j in range(train_per_class):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{j}.JPEG")
        for j in range(val_per_class):
            name = f"val_{c * val_per_class + j}.JPEG"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


# ------------------------------------------------------------------------------------- library
def test_cifar_pickles_load_in_their_real_layout(tmp_path):
    write_cifar100(tmp_path)
    d = load_cifar(tmp_path, classes=100)
    assert d.x_train.shape == (1000, 3, 32, 32) and d.x_train.dtype == torch.uint8
    assert d.x_test.shape == (200, 3, 32, 32) and sorted(torch.unique(d.y_train).tolist()) == list(range(100))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar(tmp_path, classes=10)
    with pytest.raises(ValueError, match="10 or 100"):
        load_cifar(tmp_path, classes=20)


def test_tiny_imagenet_folder_and_val_test_split(tmp_path):
    base = write_tiny_imagenet(tmp_path, classes=4, train_per_class=2, val_per_class=4)
    d = load_tiny_imagenet(tmp_path)           # the parent folder works too
    assert d.x_train.shape == (8, 3, 64, 64) and d.y_train.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert d.x_val.shape[0] == 8 and d.x_test.shape[0] == 8      # 4 val images per class, halved per class
    assert torch.bincount(d.y_val).tolist() == [2, 2, 2, 2] == torch.bincount(d.y_test).tolist()
    assert load_tiny_imagenet(base).x_train.shape == d.x_train.shape
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        load_tiny_imagenet(tmp_path / "nowhere")


def test_class_split_tasks_are_disjoint_relabelled_and_hold_out_validation():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12).repeat_interleave(10)
    x = torch.randint(0, 255, (120, 3, 4, 4), generator=g, dtype=torch.uint8)
    data = ImageSplits(x, y, x[:24], torch.arange(12).repeat_interleave(2))
    tasks = class_split_tasks(data, classes_per_task=3, validation=0.2, seed=5)
    assert len(tasks) == 4
    seen = set()
    for t in tasks:
        assert set(t.y_train.tolist()) == {3 * t.task_id + j for j in range(3)}   # global labels of task t's head
        assert t.num_train == 24 and t.y_val.numel() == 6                           # 8 + 2 per class
        assert not seen & set(t.classes)
        seen |= set(t.classes)
        for xi, yi in zip(t.x_train, t.y_train):     # images keep their own class
            src = int(torch.nonzero((x == xi).flatten(1).all(1))[0]) // 10
            assert t.classes[int(yi) - 3 * t.task_id] == src
    assert seen == set(range(12))
    again = class_split_tasks(data, classes_per_task=3, validation=0.2, seed=5)
    assert all(a.classes == b.classes and torch.equal(a.x_train, b.x_train) for a, b in zip(tasks, again))
    assert [t.classes for t in class_split_tasks(data, 3, class_order="fixed")] == [[0, 1, 2], [3, 4, 5], [6, 7, 8],
                                                                                   [9, 10, 11]]
    with pytest.raises(ValueError, match="num_tasks"):
        class_split_tasks(data, 3, num_tasks=5)


def test_augment_batch_crops_flips_and_keeps_dtype():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8).to(torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=2, flip=True, brightness=0.2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert torch.equal(same, x)
    flipped = augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=True)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_lamaml_convnet_matches_the_paper_architecture():
    cifar = LaMAMLConvNet(100)
    convs = [m for m in cifar.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in cifar.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 3 and all(c.out_channels == 160 and c.stride == (2, 2) for c in convs)
    assert [(l.in_features, l.out_features) for l in linears] == [(2560, 320), (320, 320), (320, 100)]
    tiny = LaMAMLConvNet(200, conv_layers=4, hidden=640, image_size=64)
    assert tiny(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 200)
    with pytest.raises(ValueError, match="divisible"):
        LaMAMLConvNet(10, conv_layers=3, image_size=20)


# ------------------------------------------------------------------------------------- example
def test_list_presets_names_every_table():
    mod = _example()
    names = mod.main(["--list-presets"])["presets"]
    assert {"cifar100-single", "cifar100-multiple", "tiny-single", "tiny-multiple", "split-cifar10-200",
            "split-cifar10-1000", "offline-digits"} <= set(names)
    for name, p in mod.PRESETS.items():
        assert p["source"], name
        assert set(p["paper"]) <= set(p["hp"]), name


def test_cifar100_preset_runs_on_real_format_data(tmp_path):
    write_cifar100(tmp_path / "data")
    mod = _example()
    res = mod.main(["--preset", "cifar100-single", "--data-root", str(tmp_path / "data"), "--tasks", "2",
                    "--seeds", "0", "--set", "er.glances=1", "cmaml.glances=1", "sync.glances=1", "lamaml.glances=1",
                    "iid.epochs=1", "lamaml.alpha0=0.003", "sync.alpha0=0.003", "laer.alpha0=0.003",
                    "cmaml.alpha=0.003", "--out", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "continual_vision_cifar100-single.json").read_text())
    assert set(data["runs"]) == {"er", "laer", "cmaml", "sync", "lamaml", "iid"}
    assert data["config"]["second_order"] == ["lamaml", "sync", "cmaml"]
    for method, runs in data["runs"].items():
        r = runs[0]
        assert len(r["R"]) == 2 and len(r["R_val"]) == 2
        assert r["second_order"] == (method in ("lamaml", "sync", "cmaml"))
        assert all(0.0 <= a <= 1.0 for a in r["R"][-1])
    assert data["paper"]["lamaml"][0] == 61.18
    al = data["runs"]["lamaml"][0]["gradient_alignment_per_task"]
    assert al[0] is None and -1.0 <= al[1] <= 1.0     # one task has no pair; two tasks have one
    assert (tmp_path / "ra_vision_cifar100-single.png").stat().st_size > 1000
    assert res["summary"]["lamaml"]["RA_mean"] == data["summary"]["lamaml"]["RA_mean"]


def test_tiny_and_split_cifar10_presets_run_on_real_format_data(tmp_path):
    write_tiny_imagenet(tmp_path / "data", classes=200, train_per_class=2, val_per_class=2)
    write_cifar10(tmp_path / "data")
    mod = _example()
    mod.main(["--preset", "tiny-multiple", "--data-root", str(tmp_path / "data"), "--tasks", "2", "--epochs", "2",
              "--methods", "lamaml", "er", "--first-order", "--set", "er.glances=1", "lamaml.alpha0=0.003", "--seeds", "0",
              "--out", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "continual_vision_tiny-multiple.json").read_text())
    assert data["config"]["epochs"] == 2 and data["config"]["second_order"] == []
    assert data["config"]["net"]["conv_layers"] == 4 and data["config"]["memories"] == 400
    mod.main(["--preset", "split-cifar10-200", "--data-root", str(tmp_path / "data"), "--tasks", "2",
              "--methods", "sparse_lamaml", "er", "--set", "sparse_lamaml.glances=1", "er.glances=1",
              "sparse_lamaml.alpha0=0.003",
              "--seeds", "0", "--out", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "continual_vision_split-cifar10-200.json").read_text())
    assert data["config"]["task_aware"] is False and data["config"]["classes_per_task"] == 2
    assert len(data["runs"]["sparse_lamaml"][0]["R"]) == 2


def test_vision_example_refuses_what_it_cannot_run(tmp_path):
    mod = _example()
    with pytest.raises(SystemExit, match="--data-root"):
        mod.main(["--preset", "cifar100-single", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit, match="not part of preset"):
        mod.main(["--preset", "split-cifar10-200", "--methods", "laer", "--out", str(tmp_path), "--no-progress"])


def test_gradient_alignment_is_the_mean_pairwise_cosine():
    from sparse_optim.continual import gradient_alignment, task_gradient

    g = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([3.0, 3.0])]
    mean, cos = gradient_alignment(g)
    assert mean == pytest.approx((0.0 + 2 ** -0.5 + 2 ** -0.5) / 3)
    assert cos[0][0] == pytest.approx(1.0) and cos[0][1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least two"):
        gradient_alignment(g[:1])
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    flat = task_gradient(model, x, y, torch.nn.functional.cross_entropy)
    w, b = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), [model.weight, model.bias])
    assert torch.allclose(flat, torch.cat([w.flatten(), b]))
    assert model.weight.grad is None
