"""Tests of the few-shot / continual-learning backbones."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad

from sparse_optim.models.convnets import SCNN, ConvNet, ConvNet4
from sparse_optim.models.mlp import MLP, count_parameters


def test_lamaml_mlp_parameter_count():
    m = MLP()
    assert count_parameters(m) == 89_610
    shapes = [(layer.weight.numel(), layer.bias.numel()) for layer in m.layers]
    assert shapes == [(78400, 100), (10000, 100), (1000, 10)]  # sparse-MAML supplement
    assert m(torch.randn(7, 1, 28, 28)).shape == (7, 10)
    assert m(torch.randn(7, 784)).shape == (7, 10)


@pytest.mark.parametrize(
    "kwargs, n4, n2",
    [
        # KFO appendix A.1.2: Omniglot 10-way, 1x28x28, 64 filters
        (dict(in_channels=1, num_classes=10, hidden=64, image_size=28), 112_586, 38_474),
        # CIFAR-FS: 32 filters, no max-pool, spatial mean before the FC
        (dict(in_channels=3, num_classes=10, hidden=32, image_size=32, max_pool=False, global_avg_pool=True),
         29_226, 10_602),
        # mini-ImageNet 10-way, 32 filters
        (dict(in_channels=3, num_classes=10, hidden=32, image_size=84), 36_906, 18_282),
    ],
)
def test_kfo_parameter_counts(kwargs, n4, n2):
    big, small = ConvNet4(**kwargs), SCNN(**kwargs)
    assert count_parameters(big) == n4
    assert count_parameters(small) == n2
    assert small.feature_dim == big.feature_dim
    x = torch.randn(3, kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    assert big(x).shape == (3, 10) and small(x).shape == (3, 10)


def test_sparse_maml_convnet4_defaults():
    m = ConvNet4()  # 3x84x84, 64 filters, 5-way
    assert m.feature_dim == 64 * 5 * 5
    expected = (3 * 9 * 64 + 64) + 3 * (64 * 9 * 64 + 64) + 4 * 2 * 64 + (1600 * 5 + 5)
    assert count_parameters(m) == expected == 121_093
    assert m(torch.randn(2, 3, 84, 84)).shape == (2, 5)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert len(bns) == 4 and not any(b.track_running_stats for b in bns)


@settings(max_examples=15, deadline=None)
@given(
    channels=st.integers(1, 3),
    ways=st.integers(1, 10),
    image_size=st.integers(16, 40),
    hidden=st.integers(1, 8),
    batch=st.integers(2, 4),
    small=st.booleans(),
    gap=st.booleans(),
)
def test_output_shapes(channels, ways, image_size, hidden, batch, small, gap):
    cls = SCNN if small else ConvNet4
    m = cls(channels, ways, hidden, image_size, global_avg_pool=gap)
    x = torch.randn(batch, channels, image_size, image_size)
    assert m.features(x).shape == (batch, m.feature_dim)
    assert m(x).shape == (batch, ways)
    s = image_size // 16
    assert m.feature_dim == (hidden if gap else hidden * s * s)


def test_transductive_batchnorm():
    torch.manual_seed(0)
    m = ConvNet4(1, 5, 8, 28)
    assert len(list(m.buffers())) == 0  # batch statistics only
    x = torch.randn(6, 1, 28, 28)
    out_train = m(x)
    m.eval()
    assert torch.allclose(m(x), out_train)  # same in eval mode (transductive)
    # prediction for an example depends on the rest of the batch
    assert not torch.allclose(m(x[:3])[0], out_train[0])
    nt = ConvNet4(1, 5, 8, 28, bn_track_running_stats=True)
    assert len([b for n, b in nt.named_buffers() if n.endswith("running_mean")]) == 4


@pytest.mark.parametrize("make", [lambda: ConvNet4(1, 5, 8, 28), lambda: SCNN(3, 4, 8, 32), lambda: MLP((20, 7, 3))])
def test_functional_call(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(4, 20) if isinstance(model, MLP) else torch.randn(4, model.in_channels, model.image_size,
                                                                       model.image_size)
    y = torch.tensor([0, 1, 2, 0])
    params = dict(model.named_parameters())
    assert torch.allclose(functional_call(model, params, (x,)), model(x))
    # replacing parameters changes the output: zero weights of the head -> logits == bias
    head_w = [n for n in params if n.endswith("weight")][-1]
    head_b = head_w[: -len("weight")] + "bias"
    new = {**params, head_w: torch.zeros_like(params[head_w])}
    out = functional_call(model, new, (x,))
    assert torch.allclose(out, params[head_b].expand_as(out))

    # differentiable inner step (MAML-style second order) through functional_call
    def loss_fn(p):
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    detached = {k: v.detach() for k, v in params.items()}
    g = grad(loss_fn)(detached)
    assert set(g) == set(params) and all(g[k].shape == params[k].shape for k in params)
    assert any(v.abs().sum() > 0 for v in g.values())
    inner = torch.autograd.grad(loss_fn(params), list(params.values()), create_graph=True)
    adapted = {k: v - 0.1 * gk for (k, v), gk in zip(params.items(), inner)}
    meta_grads = torch.autograd.grad(loss_fn(adapted), list(params.values()))
    assert all(mg is not None and torch.isfinite(mg).all() for mg in meta_grads)


def test_init_and_bias_options():
    torch.manual_seed(0)
    m = ConvNet4(3, 5, 16, 32)
    assert all(torch.all(p == 0) for n, p in m.named_parameters() if n.endswith("bias") and "norm" not in n)
    w = m.blocks[1].conv.weight
    assert abs(w.std().item() - (2.0 / (16 * 9)) ** 0.5) < 0.03  # Kaiming normal, fan-in, ReLU gain
    d = ConvNet4(3, 5, 16, 32, init="default")
    assert not torch.all(d.blocks[0].conv.bias == 0)
    nb = ConvNet4(3, 5, 16, 32, bias=False)
    names = [n for n, _ in nb.named_parameters()]
    assert not any(n.endswith("bias") and "norm" not in n for n in names)
    assert count_parameters(m) - count_parameters(nb) == 4 * 16 + 5
    mlp = MLP(bias=False)
    assert count_parameters(mlp) == 78400 + 10000 + 1000


def test_count_parameters_trainable_only():
    m = MLP((4, 3, 2))
    m.layers[0].weight.requires_grad_(False)
    assert count_parameters(m) == 4 * 3 + 3 + 3 * 2 + 2
    assert count_parameters(m, trainable_only=True) == 3 + 3 * 2 + 2
    with pytest.raises(ValueError, match="model"):
        count_parameters("not a module")


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: ConvNet4(hidden=0), "hidden"),
        (lambda: ConvNet4(in_channels=0), "in_channels"),
        (lambda: ConvNet4(num_classes=2.5), "num_classes"),
        (lambda: ConvNet4(image_size=8), "image_size"),
        (lambda: SCNN(image_size=8), "image_size"),
        (lambda: ConvNet4(init="xavier"), "init"),
        (lambda: ConvNet(num_blocks=0), "num_blocks"),
        (lambda: MLP((784,)), "sizes"),
        (lambda: MLP((784, 0, 10)), "sizes"),
    ],
)
def test_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_inputs():
    m = ConvNet4(1, 5, 8, 28)
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="x must"):
        MLP()(torch.randn(2, 100))


def _reference_forward(model: ConvNet, x: torch.Tensor, pool: str) -> torch.Tensor:
    """Independent re-implementation: [conv3x3 - batch-stat BN - ReLU - maxpool2] x n, pooling, linear."""
    p = dict(model.named_parameters())
    h = x
    for i in range(model.num_blocks):
        h = nn.functional.conv2d(h, p[f"blocks.{i}.conv.weight"], p[f"blocks.{i}.conv.bias"], padding=1)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-5)
        h = h * p[f"blocks.{i}.norm.weight"].view(1, -1, 1, 1) + p[f"blocks.{i}.norm.bias"].view(1, -1, 1, 1)
        h = nn.functional.max_pool2d(torch.relu(h), 2)
    if pool == "avg-to-4-block-size":
        s = x.shape[-1] // 16
        k = h.shape[-1]
        # adaptive average pooling windows: [floor(i*k/s), ceil((i+1)*k/s))
        rows = [(i * k // s, -((-(i + 1) * k) // s)) for i in range(s)]
        h = torch.stack(
            [torch.stack([h[..., a:b, c:d].mean(dim=(-2, -1)) for (c, d) in rows], -1) for (a, b) in rows], -2
        )
    return nn.functional.linear(h.flatten(1), p["head.weight"], p["head.bias"])


def test_forward_matches_reference_implementation():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 84, 84)
    with torch.no_grad():
        for model in (ConvNet4(3, 5, 6, 84), SCNN(3, 5, 6, 84)):
            for prm in model.parameters():  # non-trivial BN affine and biases
                prm.add_(0.1 * torch.randn_like(prm))
            pool = "avg-to-4-block-size" if isinstance(model, SCNN) else "none"
            assert torch.allclose(model(x), _reference_forward(model, x, pool), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- ResNet-12, linear models
def test_resnet12_shapes_counts_and_init():
    from sparse_optim.models import RESNET12_CHANNELS, ResNet12, count_parameters

    torch.manual_seed(0)
    small, large = ResNet12(num_classes=5), ResNet12(num_classes=5, channels="large", pool_last=True)
    x = torch.randn(2, 3, 84, 84)
    assert small(x).shape == (2, 5) and small.blocks(x).shape == (2, 512, 11, 11)   # official: no 4th pool
    assert large.blocks(x).shape == (2, 640, 5, 5)                                 # MetaOptNet layout
    assert count_parameters(large) == 12_427_525                                   # MetaOptNet ResNet-12: 12.4M
    assert RESNET12_CHANNELS["small"] == (64, 128, 256, 512)
    w = small.blocks[1].conv2.weight                                               # Xavier-uniform bound
    bound = (6.0 / (w.shape[1] * 9 + w.shape[0] * 9)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(small.head.bias == 0) and all(m.bias is None for m in small.modules()
                                                   if isinstance(m, torch.nn.Conv2d))
    names = dict(small.named_parameters())
    assert {"blocks.0.bn1.weight", "blocks.0.downsample.1.weight", "head.weight"} <= set(names)
    tiny = ResNet12(num_classes=3, channels=(2, 3, 4, 5))
    assert tiny(torch.randn(4, 3, 16, 16)).shape == (4, 3)
    with pytest.raises(ValueError, match="channels"):
        ResNet12(channels="huge")
    with pytest.raises(ValueError, match="channels"):
        ResNet12(channels=(1, 2, 3))
    with pytest.raises(ValueError, match="x must be"):
        tiny(torch.randn(2, 1, 16, 16))


def test_linear_net_is_linear():
    from sparse_optim.models import LinearNet, count_parameters

    torch.manual_seed(0)
    lr, net = LinearNet(784, 5), LinearNet(784, 5, hidden=(256, 128, 64, 64))
    assert count_parameters(lr) == 784 * 5 + 5
    x, y = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    assert net(x).shape == (3, 5)
    # affine: f(a x + (1 - a) y) = a f(x) + (1 - a) f(y)
    torch.testing.assert_close(net(0.3 * x + 0.7 * y), 0.3 * net(x) + 0.7 * net(y), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="hidden"):
        LinearNet(4, 2, hidden=(0,))
