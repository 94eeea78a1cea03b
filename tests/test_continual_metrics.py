"""Tests for sparse_optim.continual.metrics (GEM's ACC / BWT / FWT)."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sparse_optim.continual.metrics import (
    AccuracyMatrix,
    backward_transfer,
    forward_transfer,
    retained_accuracy,
)

# R[i, j]: accuracy on task j after learning task i
R3 = [
    [0.90, 0.10, 0.20],
    [0.80, 0.95, 0.15],
    [0.70, 0.85, 0.90],
]


def test_hand_computed_3x3():
    assert retained_accuracy(R3) == pytest.approx((0.70 + 0.85 + 0.90) / 3)
    assert retained_accuracy(R3, after_task=0) == pytest.approx(0.90)
    assert retained_accuracy(R3, after_task=1) == pytest.approx((0.80 + 0.95) / 2)
    # ((0.70 - 0.90) + (0.85 - 0.95)) / 2 = -0.15 : forgetting is negative
    assert backward_transfer(R3) == pytest.approx(-0.15)
    # ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.10 - 0.10) + (0.15 - 0.05)) / 2
    assert forward_transfer(R3, [0.5, 0.10, 0.05]) == pytest.approx(0.05)


def test_hand_computed_percent_and_positive_transfer():
    R = np.array([[50.0, 0.0], [70.0, 80.0]])  # accuracy on task 0 improved
    assert retained_accuracy(R) == pytest.approx(75.0)
    assert backward_transfer(R) == pytest.approx(20.0)
    assert forward_transfer(R, [10.0, 10.0]) == pytest.approx(-10.0)


def test_accepts_torch_and_numpy():
    for R in (torch.tensor(R3), torch.tensor(R3, dtype=torch.float64), np.array(R3), R3):
        assert retained_accuracy(R) == pytest.approx(0.8166666, abs=1e-6)
        assert backward_transfer(R) == pytest.approx(-0.15, abs=1e-6)
    assert forward_transfer(torch.tensor(R3), torch.tensor([0.5, 0.1, 0.05])) == pytest.approx(0.05)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 8)).map(lambda t: (t[0], t[0])),
              elements=st.floats(0, 1)))
def test_metrics_match_explicit_loops(R):
    T = R.shape[0]
    ra = sum(R[T - 1, j] for j in range(T)) / T
    bwt = sum(R[T - 1, j] - R[j, j] for j in range(T - 1)) / (T - 1)
    b = np.linspace(0, 1, T)
    fwt = sum(R[j - 1, j] - b[j] for j in range(1, T)) / (T - 1)
    assert retained_accuracy(R) == pytest.approx(ra, abs=1e-12)
    assert backward_transfer(R) == pytest.approx(bwt, abs=1e-12)
    assert forward_transfer(R, b) == pytest.approx(fwt, abs=1e-12)
    # no forgetting: if the last row equals the diagonal, BWT is 0
    R2 = R.copy()
    R2[T - 1, :] = np.diag(R2)
    assert backward_transfer(R2) == pytest.approx(0.0, abs=1e-12)


def test_accuracy_matrix_accumulates():
    m = AccuracyMatrix(3)
    assert m.num_tasks == 3
    assert np.isnan(m.matrix).all()
    for i in range(3):
        for j in range(3):
            m.update(i, j, R3[i][j])
    np.testing.assert_allclose(m.matrix, R3)
    assert m.retained_accuracy() == pytest.approx(retained_accuracy(R3))
    assert m.backward_transfer() == pytest.approx(-0.15)
    assert m.forward_transfer([0.5, 0.1, 0.05]) == pytest.approx(0.05)
    mat = m.matrix
    mat[0, 0] = 123.0  # .matrix is a copy
    assert m.matrix[0, 0] == pytest.approx(0.9)


def test_update_row_and_tensor_scalars():
    m = AccuracyMatrix(3)
    m.update_row(0, [torch.tensor(0.9)])
    m.update_row(1, np.array([0.8, 0.95]))
    m.update(2, 0, torch.tensor(0.7))
    m.update_row(2, [0.7, 0.85, 0.9])
    np.testing.assert_allclose(m.matrix[np.tril_indices(3)], [0.9, 0.8, 0.95, 0.7, 0.85, 0.9])
    assert np.isnan(m.matrix[0, 1]) and np.isnan(m.matrix[1, 2])
    # BWT and RA only need the lower triangle
    assert m.backward_transfer() == pytest.approx(-0.15)
    assert m.retained_accuracy(after_task=1) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="forward_transfer"):
        m.forward_transfer([0.0, 0.0, 0.0])  # needs the superdiagonal


def test_missing_entries_raise():
    m = AccuracyMatrix(3)
    m.update(0, 0, 0.9)
    with pytest.raises(ValueError, match="retained_accuracy"):
        m.retained_accuracy()
    with pytest.raises(ValueError, match="backward_transfer"):
        m.backward_transfer()
    assert m.retained_accuracy(after_task=0) == pytest.approx(0.9)


def test_to_dict_is_json_and_round_trips():
    m = AccuracyMatrix(3)
    m.update(0, 0, 0.9)
    d = m.to_dict()
    s = json.dumps(d, allow_nan=False)  # strict JSON: no NaN
    assert d["matrix"][0] == [0.9, None, None]
    assert d["retained_accuracy"] is None and d["backward_transfer"] is None
    assert d["forward_transfer"] is None
    back = AccuracyMatrix.from_dict(json.loads(s))
    np.testing.assert_array_equal(np.isnan(back.matrix), np.isnan(m.matrix))

    for i in range(3):
        m.update_row(i, R3[i])
    d = m.to_dict(baseline=[0.5, 0.1, 0.05])
    json.dumps(d, allow_nan=False)
    assert d["num_tasks"] == 3
    assert d["retained_accuracy"] == pytest.approx(retained_accuracy(R3))
    assert d["backward_transfer"] == pytest.approx(-0.15)
    assert d["forward_transfer"] == pytest.approx(0.05)
    np.testing.assert_allclose(AccuracyMatrix.from_dict(d).matrix, R3)


def test_single_task():
    m = AccuracyMatrix(1)
    m.update(0, 0, 0.5)
    assert m.retained_accuracy() == 0.5
    with pytest.raises(ValueError, match="at least 2 tasks"):
        m.backward_transfer()
    d = m.to_dict()
    assert d["backward_transfer"] is None and d["retained_accuracy"] == 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tasks"):
        AccuracyMatrix(0)
    with pytest.raises(TypeError, match="num_tasks"):
        AccuracyMatrix(2.0)
    m = AccuracyMatrix(2)
    with pytest.raises(ValueError, match=r"\bi\b"):
        m.update(2, 0, 0.1)
    with pytest.raises(ValueError, match=r"\bj\b"):
        m.update(0, -1, 0.1)
    with pytest.raises(TypeError, match=r"\bi\b"):
        m.update(0.0, 0, 0.1)
    with pytest.raises(ValueError, match="acc"):
        m.update(0, 0, math.nan)
    with pytest.raises(TypeError, match="acc"):
        m.update(0, 0, "0.5")
    with pytest.raises(TypeError, match="acc"):
        m.update(0, 0, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="accs"):
        m.update_row(0, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="square"):
        retained_accuracy(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square"):
        backward_transfer(np.zeros(3))
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R3, [0.1, 0.2])
    with pytest.raises(ValueError, match="after_task"):
        retained_accuracy(R3, after_task=3)
    with pytest.raises(ValueError, match="matrix"):
        AccuracyMatrix.from_dict({"num_tasks": 2, "matrix": [[0.1]]})


def test_a_percentage_is_refused():
    """update(0, 0, 75.0) used to be accepted silently and reported RA 7500%."""
    from sparse_optim.continual import AccuracyMatrix

    R = AccuracyMatrix(2)
    with pytest.raises(ValueError, match="fraction"):
        R.update(0, 0, 75.0)
    with pytest.raises(ValueError, match="fraction"):
        R.update_row(0, [0.5, 1.5])
    R.update(0, 0, 0.75)
