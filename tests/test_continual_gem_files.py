"""GEM / MER / La-MAML stream files: written and read in the papers' format, bad files refused."""
import pytest
import torch

from sparse_optim.continual import load_gem_file, mnist_permutations, mnist_rotations, save_gem_file


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g)


def test_gem_files_round_trip_rotations_and_permutations(tmp_path):
    xtr, ytr = _images(40, 0)
    xte, yte = _images(20, 1)
    for make, kind in ((mnist_rotations, "rotation"), (mnist_permutations, "permutation")):
        tasks = make(xtr, ytr, xte, yte, num_tasks=3, samples_per_task=10, test_per_task=5, seed=2)
        path = tmp_path / f"{kind}.pt"
        save_gem_file(tasks, path)
        raw = torch.load(path, weights_only=True)     # the format itself: [tasks_train, tasks_test]
        assert len(raw) == 2 and len(raw[0]) == 3 and raw[0][0][1].shape == (10, 784)
        back = load_gem_file(path)
        for a, b in zip(back, tasks):
            assert a.kind == kind and a.task_id == b.task_id
            assert torch.equal(a.x_train, b.x_train.reshape(10, -1)) and torch.equal(a.y_test, b.y_test)
            if kind == "rotation":
                assert a.angle == pytest.approx(b.angle)
            else:
                assert torch.equal(a.permutation, b.permutation)


def test_gem_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gem_file(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save([[["a", torch.zeros(2, 4), torch.zeros(2)]], [["a", torch.zeros(2, 4), torch.zeros(2).long()]]], bad)
    with pytest.raises(ValueError, match="y must be an integer"):
        load_gem_file(bad)
    torch.save({"train": []}, bad)
    with pytest.raises(ValueError, match=r"expected \[tasks_train, tasks_test\]"):
        load_gem_file(bad)
