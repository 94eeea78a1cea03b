"""KFO Eq. 4 (functional.adapted_factors): the partial derivative through U only."""
import pytest
import torch

from sparse_optim.functional import adapted_factors, init_factors, kronecker_transform

pytestmark = pytest.mark.ops


@pytest.mark.parametrize("create_graph", [False, True])
def test_hypergradient_ignores_the_gradients_dependence_on_the_factors(create_graph):
    """In a second-order inner loop g_{t+1} depends on the factors through theta_{t+1}; Eq. 4's
    step is -lr * J_xi U(d_t)^T g_{t+1} with g held fixed."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    theta = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    factors = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_(True)
               for k, v in init_factors((3, 4), dtype=torch.float64).items()}
    lr, factor_lr = 0.3, 0.05

    def loss(w):
        return ((x @ w.t() - y) ** 2).mean()

    d0 = torch.autograd.grad(loss(theta), theta, create_graph=True)[0]
    theta1 = theta - lr * kronecker_transform(d0, factors)
    g1 = torch.autograd.grad(loss(theta1), theta1, create_graph=True)[0]  # depends on the factors
    new = adapted_factors(factors, d0, g1, lr=lr, factor_lr=factor_lr, create_graph=create_graph)
    keys = list(factors)
    want = torch.autograd.grad(-lr * (kronecker_transform(d0, factors) * g1.detach()).sum(),
                               [factors[k] for k in keys], retain_graph=True)
    for k, h in zip(keys, want):
        torch.testing.assert_close(new[k].detach(), (factors[k] - factor_lr * h).detach())
    if create_graph:  # still differentiable w.r.t. the initial factors (second order)
        assert new[keys[0]].requires_grad and new[keys[0]].grad_fn is not None
