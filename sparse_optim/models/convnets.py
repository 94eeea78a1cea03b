"""Convolutional backbones of the MAML / sparse-MAML / KFO few-shot experiments.

:class:`ConvNet4` is the standard 4-block network (Finn et al. 2017; sparse-MAML
supplement B.1.1): 4 x [conv3x3(hidden, padding 1) - BatchNorm - ReLU -
maxpool 2x2] followed by a linear head.  BatchNorm uses batch statistics only
(``track_running_stats=False``): the *transductive* setting of MAML and
sparse-MAML, and it keeps the modules buffer-free for ``torch.func.functional_call``.

:class:`SCNN` is the 2-block "small CNN" of Arnold et al. (KFO, appendix
A.1.2): the first two blocks of :class:`ConvNet4` and the same FC input
dimensionality, obtained by adaptive average pooling of the block-2 feature map
to the spatial size block 4 would produce.

Parameter counts reported in the KFO appendix, all reproduced here
(``ConvNet4`` / ``SCNN``; tested in ``tests/test_models.py``):

* Omniglot, 10-way, 1x28x28, hidden=64:  112,586 / 38,474
* CIFAR-FS, 10-way, 3x32x32, hidden=32, no max-pool, spatial mean before
  the FC (``max_pool=False, global_avg_pool=True``):  29,226 / 10,602
* mini-ImageNet, 10-way, 3x84x84, hidden=32:  36,906 / 18,282

These counts include conv biases and BatchNorm affine parameters.  (Finn et
al.'s Omniglot network uses stride-2 convolutions instead of max-pooling; the
parameter count is identical, and this implementation always max-pools.)
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBlock", "ConvNet", "ConvNet4", "SCNN"]

_INITS = ("kaiming", "default")


def _pos_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class ConvBlock(nn.Module):
    """conv3x3 (padding 1) -> BatchNorm2d -> ReLU -> optional 2x2 max-pool."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        max_pool: bool = True,
        bn_track_running_stats: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels, track_running_stats=bn_track_running_stats)
        self.max_pool = max_pool

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(x, 2) if self.max_pool else x


class ConvNet(nn.Module):
    """A stack of ``num_blocks`` :class:`ConvBlock` s and a linear head.

    Args:
        in_channels: image channels (1 for Omniglot/MNIST, 3 for RGB).
        num_classes: output logits (N ways).
        hidden: filters per conv layer.
        image_size: input height = width (needed to size the head).
        num_blocks: conv blocks.
        max_pool: 2x2 max-pool after each block.
        global_avg_pool: average the final feature map over space (FC input =
            ``hidden``), as in the KFO CIFAR-FS model.
        fc_spatial: if given (and not ``global_avg_pool``), the final feature map is
            adaptively average-pooled to ``fc_spatial x fc_spatial`` when its size
            differs (used by :class:`SCNN`).
        bn_track_running_stats: ``False`` (default) = transductive batch norm.
        bias: conv / linear biases (BatchNorm keeps its shift).
        init: ``"kaiming"`` (Kaiming-normal conv and head weights, zero biases,
            BN weight 1 / bias 0; sparse-MAML supplement B.1) or ``"default"``
            (PyTorch's own initialisation).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 5,
        hidden: int = 64,
        image_size: int = 84,
        num_blocks: int = 4,
        max_pool: bool = True,
        global_avg_pool: bool = False,
        fc_spatial: Optional[int] = None,
        bn_track_running_stats: bool = False,
        bias: bool = True,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("hidden", hidden),
            ("image_size", image_size),
            ("num_blocks", num_blocks),
        ):
            _pos_int(name, v)
        if fc_spatial is not None:
            _pos_int("fc_spatial", fc_spatial)
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        spatial = image_size
        for i in range(num_blocks):
            if max_pool:
                if spatial < 2:
                    raise ValueError(
                        f"image_size={image_size} is too small for num_blocks={num_blocks} max-pooled blocks "
                        f"(feature map vanishes at block {i + 1})"
                    )
                spatial //= 2
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_blocks = num_blocks
        self.global_avg_pool = global_avg_pool
        if global_avg_pool:
            self.fc_spatial: Optional[int] = None
            self.feature_dim = hidden
        else:
            self.fc_spatial = fc_spatial if fc_spatial is not None and fc_spatial != spatial else None
            out_spatial = fc_spatial if fc_spatial is not None else spatial
            self.feature_dim = hidden * out_spatial * out_spatial
        self.blocks = nn.Sequential(
            *(
                ConvBlock(in_channels if i == 0 else hidden, hidden, max_pool, bn_track_running_stats, bias)
                for i in range(num_blocks)
            )
        )
        self.head = nn.Linear(self.feature_dim, num_classes, bias=bias)
        if init == "kaiming":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal weights (fan-in; ReLU gain for convs, linear gain for the head), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """Flattened features fed to the head, ``[n, feature_dim]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be [n, {self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        h = self.blocks(x)
        if self.global_avg_pool:
            return h.mean(dim=(-2, -1))
        if self.fc_spatial is not None:
            h = F.adaptive_avg_pool2d(h, self.fc_spatial)
        return h.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ConvNet4(ConvNet):
    """4-block ConvNet of MAML / sparse-MAML (see :class:`ConvNet` for arguments).

    With the defaults (3x84x84, hidden 64, 5 ways) the head sees 64*5*5 = 1600
    features; for Omniglot (1x28x28) it sees 64 (28 -> 14 -> 7 -> 3 -> 1).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 5,
        hidden: int = 64,
        image_size: int = 84,
        max_pool: bool = True,
        global_avg_pool: bool = False,
        bn_track_running_stats: bool = False,
        bias: bool = True,
        init: str = "kaiming",
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            hidden,
            image_size,
            num_blocks=4,
            max_pool=max_pool,
            global_avg_pool=global_avg_pool,
            bn_track_running_stats=bn_track_running_stats,
            bias=bias,
            init=init,
        )


class SCNN(ConvNet):
    """2-block small CNN of the KFO paper: the first two :class:`ConvNet4` blocks, and
    the same FC input dimensionality as :class:`ConvNet4` with the same arguments
    (block-2 features are adaptively average-pooled to ConvNet4's final spatial size,
    or averaged over space when ``global_avg_pool``)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 5,
        hidden: int = 64,
        image_size: int = 84,
        max_pool: bool = True,
        global_avg_pool: bool = False,
        bn_track_running_stats: bool = False,
        bias: bool = True,
        init: str = "kaiming",
    ) -> None:
        _pos_int("image_size", image_size)
        spatial4 = image_size
        if max_pool:
            for _ in range(4):
                if spatial4 < 2:
                    raise ValueError(f"image_size={image_size} is too small for 4 max-pooled blocks")
                spatial4 //= 2
        super().__init__(
            in_channels,
            num_classes,
            hidden,
            image_size,
            num_blocks=2,
            max_pool=max_pool,
            global_avg_pool=global_avg_pool,
            fc_spatial=spatial4,
            bn_track_running_stats=bn_track_running_stats,
            bias=bias,
            init=init,
        )
