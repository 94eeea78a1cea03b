"""Tests for sparse_optim.continual.streams (MNIST rotations / permutations)."""
import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_optim.continual.streams import (
    Task,
    iterate_stream,
    iterate_task_batches,
    mnist_many_permutations,
    mnist_permutations,
    mnist_rotations,
    rotate_images,
)

N_TRAIN, N_TEST = 300, 60


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    # digit-like images: random blobs in the centre, zero border
    xtr = torch.zeros(N_TRAIN, 28, 28, dtype=torch.uint8)
    xte = torch.zeros(N_TEST, 28, 28, dtype=torch.uint8)
    xtr[:, 4:24, 4:24] = torch.randint(0, 256, (N_TRAIN, 20, 20), generator=g, dtype=torch.uint8)
    xte[:, 4:24, 4:24] = torch.randint(0, 256, (N_TEST, 20, 20), generator=g, dtype=torch.uint8)
    ytr = torch.randint(0, 10, (N_TRAIN,), generator=g)
    yte = torch.randint(0, 10, (N_TEST,), generator=g)
    return xtr, ytr, xte, yte


def _check_task_common(task, data, n_train, n_test):
    xtr, ytr, xte, yte = data
    assert isinstance(task, Task)
    assert task.x_train.shape == (n_train, 784) and task.x_train.dtype == torch.float32
    assert task.x_test.shape == (n_test, 784) and task.x_test.dtype == torch.float32
    assert task.y_train.dtype == torch.int64 and task.y_test.dtype == torch.int64
    assert task.num_train == n_train and task.num_test == n_test
    assert 0.0 <= task.x_train.min() and task.x_train.max() <= 1.0
    # labels come from the sampled source digits, sampled without replacement
    assert torch.equal(task.y_train, ytr[task.train_index])
    assert torch.equal(task.y_test, yte[task.test_index])
    assert task.train_index.unique().numel() == n_train
    assert task.test_index.unique().numel() == n_test


# --------------------------------------------------------------------------- #
# rotations
# --------------------------------------------------------------------------- #
def test_rotations_shapes_and_angle_bins(data):
    tasks = mnist_rotations(*data, num_tasks=20, samples_per_task=50, test_per_task=20, seed=0)
    assert [t.task_id for t in tasks] == list(range(20))
    for t, task in enumerate(tasks):
        _check_task_common(task, data, 50, 20)
        assert task.kind == "rotation" and task.permutation is None
        assert 9.0 * t <= task.angle < 9.0 * (t + 1)  # t-th of 20 bins of [0, 180]
    # angles spread within their bins (not e.g. always the bin start)
    offsets = np.array([task.angle - 9.0 * t for t, task in enumerate(tasks)])
    assert offsets.std() > 1.0
    # independent training subsets per task
    assert not torch.equal(tasks[0].train_index, tasks[1].train_index)


@settings(max_examples=15, deadline=None)
@given(num_tasks=st.integers(1, 12), seed=st.integers(0, 10_000),
       max_angle=st.sampled_from([90.0, 180.0, 360.0]))
def test_rotation_angles_in_bins_property(data, num_tasks, seed, max_angle):
    tasks = mnist_rotations(*data, num_tasks=num_tasks, samples_per_task=2, test_per_task=2,
                            seed=seed, max_angle=max_angle)
    width = max_angle / num_tasks
    for t, task in enumerate(tasks):
        assert width * t - 1e-9 <= task.angle < width * (t + 1) + 1e-9


def test_rotations_match_pil_rotate(data):
    """GEM generated MNIST Rotations with PIL's Image.rotate(angle) (nearest, ccw)."""
    from PIL import Image

    xtr, _, xte, _ = data
    tasks = mnist_rotations(*data, num_tasks=4, samples_per_task=20, test_per_task=10, seed=3)
    agree = []
    for task in tasks:
        for split_x, split_idx, src in ((task.x_train, task.train_index, xtr),
                                        (task.x_test, task.test_index, xte)):
            for row, k in zip(split_x[:5], split_idx[:5]):
                ref = Image.fromarray(src[k].numpy(), mode="L").rotate(task.angle)
                ref = torch.from_numpy(np.array(ref)).float().div(255).reshape(784)
                agree.append((row == ref).float().mean().item())
    assert min(agree) >= 0.99, min(agree)
    # and the rotation is not the identity
    for task in tasks[1:]:
        src = xtr[task.train_index].float().div(255).reshape(-1, 784)
        assert (task.x_train - src).abs().mean() > 0.05


def test_rotate_images_quarter_turn_is_rot90():
    x = torch.rand(4, 28, 28)
    assert torch.equal(rotate_images(x, 90.0), torch.rot90(x, 1, dims=(1, 2)))
    assert torch.equal(rotate_images(x, 0.0), x)
    assert torch.equal(rotate_images(x, 180.0), torch.rot90(x, 2, dims=(1, 2)))
    with pytest.raises(ValueError, match="interpolation"):
        rotate_images(x, 10.0, interpolation="cubic")


def test_rotations_deterministic_from_seed(data):
    a = mnist_rotations(*data, num_tasks=3, samples_per_task=30, test_per_task=10, seed=7)
    b = mnist_rotations(*data, num_tasks=3, samples_per_task=30, test_per_task=10, seed=7)
    c = mnist_rotations(*data, num_tasks=3, samples_per_task=30, test_per_task=10, seed=8)
    for ta, tb in zip(a, b):
        assert ta.angle == tb.angle
        for f in ("x_train", "y_train", "x_test", "y_test", "train_index", "test_index"):
            assert torch.equal(getattr(ta, f), getattr(tb, f))
    assert [t.angle for t in a] != [t.angle for t in c]
    assert not torch.equal(a[0].train_index, c[0].train_index)


def test_float_and_uint8_inputs_agree(data):
    xtr, ytr, xte, yte = data
    a = mnist_rotations(xtr, ytr, xte, yte, num_tasks=2, samples_per_task=10, test_per_task=5)
    b = mnist_rotations(xtr.float() / 255, ytr, xte.float() / 255, yte,
                        num_tasks=2, samples_per_task=10, test_per_task=5)
    for ta, tb in zip(a, b):
        assert torch.allclose(ta.x_train, tb.x_train) and torch.allclose(ta.x_test, tb.x_test)


def test_test_per_task_default_is_whole_test_set(data):
    tasks = mnist_rotations(*data, num_tasks=2, samples_per_task=N_TRAIN, seed=0)
    for task in tasks:
        assert task.num_test == N_TEST and task.num_train == N_TRAIN
        assert torch.equal(task.test_index, torch.arange(N_TEST))


# --------------------------------------------------------------------------- #
# permutations
# --------------------------------------------------------------------------- #
def test_permutations_are_fixed_per_task_and_invertible(data):
    xtr, ytr, xte, yte = data
    tasks = mnist_permutations(*data, num_tasks=5, samples_per_task=40, test_per_task=15, seed=1)
    perms = [t.permutation for t in tasks]
    for task in tasks:
        _check_task_common(task, data, 40, 15)
        assert task.kind == "permutation" and task.angle is None
        p = task.permutation
        assert torch.equal(p.sort().values, torch.arange(784))  # a permutation
        inv = torch.argsort(p)
        src_tr = xtr[task.train_index].reshape(-1, 784).float() / 255
        src_te = xte[task.test_index].reshape(-1, 784).float() / 255
        # permuting back recovers the inputs; the same permutation is used for
        # every train and test image of the task
        assert torch.equal(task.x_train[:, inv], src_tr)
        assert torch.equal(task.x_test[:, inv], src_te)
        assert torch.equal(task.x_train, src_tr[:, p])
    for i in range(len(perms)):
        for j in range(i + 1, len(perms)):
            assert not torch.equal(perms[i], perms[j])
    assert not torch.equal(perms[0], torch.arange(784))  # first task permuted too (GEM)


def test_permutations_deterministic_from_seed(data):
    a = mnist_permutations(*data, num_tasks=3, samples_per_task=20, test_per_task=5, seed=4)
    b = mnist_permutations(*data, num_tasks=3, samples_per_task=20, test_per_task=5, seed=4)
    c = mnist_permutations(*data, num_tasks=3, samples_per_task=20, test_per_task=5, seed=5)
    for ta, tb, tc in zip(a, b, c):
        assert torch.equal(ta.permutation, tb.permutation)
        assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.y_test, tb.y_test)
        assert not torch.equal(ta.permutation, tc.permutation)


def test_many_permutations_defaults(data):
    tasks = mnist_many_permutations(*data, test_per_task=3)
    assert len(tasks) == 100
    assert all(t.num_train == 200 and t.num_test == 3 for t in tasks)
    assert len({tuple(t.permutation[:20].tolist()) for t in tasks}) == 100


def test_default_sizes_match_the_protocol(data):
    xtr, ytr, xte, yte = data
    big_x = xtr.repeat(4, 1, 1)  # 1200 >= 1000 samples per task
    big_y = ytr.repeat(4)
    tasks = mnist_permutations(big_x, big_y, xte, yte, test_per_task=2)
    assert len(tasks) == 20 and all(t.num_train == 1000 for t in tasks)
    # rotations share the defaults (checked on the signature: rotating 20k digits is slow)
    params = inspect.signature(mnist_rotations).parameters
    assert params["num_tasks"].default == 20 and params["samples_per_task"].default == 1000
    assert params["max_angle"].default == 180.0 and params["interpolation"].default == "nearest"


# --------------------------------------------------------------------------- #
# iteration
# --------------------------------------------------------------------------- #
def test_iterate_task_batches_single_pass(data):
    (task,) = mnist_permutations(*data, num_tasks=1, samples_per_task=95, test_per_task=5)
    batches = list(iterate_task_batches(task))
    assert len(batches) == math.ceil(95 / 10)
    assert [x.shape[0] for x, _ in batches] == [10] * 9 + [5]
    assert torch.equal(torch.cat([x for x, _ in batches]), task.x_train)
    assert torch.equal(torch.cat([y for _, y in batches]), task.y_train)
    assert len(list(iterate_task_batches(task, drop_last=True))) == 9
    g = torch.Generator().manual_seed(0)
    shuffled = list(iterate_task_batches(task, 10, shuffle=True, generator=g))
    ys = torch.cat([y for _, y in shuffled])
    xs = torch.cat([x for x, _ in shuffled])
    assert sorted(ys.tolist()) == sorted(task.y_train.tolist())
    assert not torch.equal(xs, task.x_train)
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_task_batches(task, 0))
    with pytest.raises(TypeError, match="task"):
        list(iterate_task_batches("task"))


def test_iterate_stream_order(data):
    tasks = mnist_permutations(*data, num_tasks=3, samples_per_task=25, test_per_task=5)
    ids = [tid for tid, x, y in iterate_stream(tasks, 10)]
    assert ids == [0] * 3 + [1] * 3 + [2] * 3


# --------------------------------------------------------------------------- #
# bad arguments
# --------------------------------------------------------------------------- #
def test_bad_arguments(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(ValueError, match="samples_per_task"):
        mnist_permutations(xtr, ytr, xte, yte, samples_per_task=N_TRAIN + 1)
    with pytest.raises(ValueError, match="test_per_task"):
        mnist_permutations(xtr, ytr, xte, yte, samples_per_task=5, test_per_task=N_TEST + 1)
    with pytest.raises(ValueError, match="num_tasks"):
        mnist_rotations(xtr, ytr, xte, yte, num_tasks=0, samples_per_task=5)
    with pytest.raises(TypeError, match="num_tasks"):
        mnist_rotations(xtr, ytr, xte, yte, num_tasks=2.0, samples_per_task=5)
    with pytest.raises(ValueError, match="train_images"):
        mnist_permutations(xtr.float(), ytr, xte, yte, samples_per_task=5)  # 0..255 floats
    with pytest.raises(TypeError, match="train_images"):
        mnist_permutations(xtr.int(), ytr, xte, yte, samples_per_task=5)
    with pytest.raises(ValueError, match="train_images"):
        mnist_permutations(xtr.reshape(N_TRAIN, 784), ytr, xte, yte, samples_per_task=5)
    with pytest.raises(TypeError, match="test_images"):
        mnist_permutations(xtr, ytr, xte.numpy(), yte, samples_per_task=5)
    with pytest.raises(ValueError, match="train_labels"):
        mnist_permutations(xtr, ytr[:-1], xte, yte, samples_per_task=5)
    with pytest.raises(TypeError, match="test_labels"):
        mnist_permutations(xtr, ytr, xte, yte.float(), samples_per_task=5)
    with pytest.raises(ValueError, match="image size"):
        mnist_permutations(xtr, ytr, xte[:, :27, :27], yte, samples_per_task=5)
    with pytest.raises(ValueError, match="max_angle"):
        mnist_rotations(xtr, ytr, xte, yte, samples_per_task=5, max_angle=0.0)
    with pytest.raises(ValueError, match="seed"):
        mnist_rotations(xtr, ytr, xte, yte, samples_per_task=5, seed=-1)


def test_task_repr_is_short():
    import torch
    from sparse_optim.continual.streams import Task

    t = Task(task_id=3, x_train=torch.rand(500, 784), y_train=torch.zeros(500, dtype=torch.long),
             x_test=torch.rand(100, 784), y_test=torch.zeros(100, dtype=torch.long), kind="rotation", angle=45.0)
    text = repr(t)
    assert len(text) < 120 and "task_id=3" in text and "angle=45" in text
