"""ResNet-12 of the few-shot literature (MetaOptNet, Lee et al. 2019; BOIL, Oh et al. 2021), as used
by sparse-MAML Table 2 / supplement Table S1.

Four residual blocks; each block is 3 x [conv3x3 (no bias) - BatchNorm - LeakyReLU] with a
1x1-conv + BatchNorm shortcut added before the last activation, then a 2x2 max-pool. Global
average pooling and a linear head follow. Defaults follow the official sparse-MAML code (which
takes its ResNet from the BOIL code release):

* channels ``(64, 128, 256, 512)`` (*small*) or ``(64, 160, 320, 640)`` (*large*, Table S1);
* LeakyReLU with PyTorch's default slope 0.01 (MetaOptNet uses 0.1: ``negative_slope=0.1``);
* max-pools after blocks 1-3 (block 3 pads by 1: 84 -> 42 -> 21 -> 11) and none after block 4
  (``pool_last=True`` gives the MetaOptNet layout 84 -> 42 -> 21 -> 10 -> 5);
* BatchNorm with batch statistics only (transductive, ``track_running_stats=False``);
* Xavier-uniform conv and head weights, zero head bias, BatchNorm weight 1 / bias 0
  (``init="default"`` keeps PyTorch's initialisation).

DropBlock / dropout (off in the official sparse-MAML runs) are not implemented.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNet12", "ResNetBlock", "RESNET12_CHANNELS"]

#: sparse-MAML supplement B.1.1: "large" and "small" ResNet-12 channel sizes.
RESNET12_CHANNELS = {"small": (64, 128, 256, 512), "large": (64, 160, 320, 640)}


class ResNetBlock(nn.Module):
    """3 x conv3x3-BN(-LeakyReLU), 1x1-conv-BN shortcut, LeakyReLU, optional 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool = True, pool_padding: int = 0,
                 negative_slope: float = 0.01, bn_track_running_stats: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, track_running_stats=bn_track_running_stats)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, track_running_stats=bn_track_running_stats)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, track_running_stats=bn_track_running_stats)
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                        nn.BatchNorm2d(out_channels, track_running_stats=bn_track_running_stats))
        self.pool, self.pool_padding, self.negative_slope = pool, pool_padding, negative_slope

    def forward(self, x: Tensor) -> Tensor:
        s = self.negative_slope
        out = F.leaky_relu(self.bn1(self.conv1(x)), s)
        out = F.leaky_relu(self.bn2(self.conv2(out)), s)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.downsample(x), s)
        return F.max_pool2d(out, 2, 2, padding=self.pool_padding) if self.pool else out


class ResNet12(nn.Module):
    """ResNet-12 (see the module docstring).

    Args:
        in_channels: image channels (3).
        num_classes: output logits (N ways).
        channels: the four block widths, or ``"small"`` / ``"large"`` (:data:`RESNET12_CHANNELS`).
        pool_last: max-pool after the fourth block too (MetaOptNet layout).
        negative_slope: LeakyReLU slope.
        bn_track_running_stats: ``False`` (default) = transductive batch norm.
        init: ``"xavier"`` (official sparse-MAML / BOIL code) or ``"default"``.

    Parameter names: ``blocks.<i>.conv<j>.weight``, ``blocks.<i>.bn<j>.{weight,bias}``,
    ``blocks.<i>.downsample.{0,1}.*`` and ``head.{weight,bias}``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 5, channels="small", pool_last: bool = False,
                 negative_slope: float = 0.01, bn_track_running_stats: bool = False, init: str = "xavier") -> None:
        super().__init__()
        if isinstance(channels, str):
            if channels not in RESNET12_CHANNELS:
                raise ValueError(f"channels must be one of {tuple(RESNET12_CHANNELS)} or 4 ints, got {channels!r}")
            channels = RESNET12_CHANNELS[channels]
        channels = tuple(channels)
        if len(channels) != 4 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be 4 positive ints, got {channels!r}")
        if init not in ("xavier", "default"):
            raise ValueError(f"init must be 'xavier' or 'default', got {init!r}")
        self.in_channels, self.channels = in_channels, channels
        pools = [(True, 0), (True, 0), (True, 1), (pool_last, 0)]
        blocks, c_in = [], in_channels
        for c, (pool, pad) in zip(channels, pools):
            blocks.append(ResNetBlock(c_in, c, pool, pad, negative_slope, bn_track_running_stats))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels[-1], num_classes)
        self.feature_dim = channels[-1]
        if init == "xavier":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform conv / head weights and zero head bias (official sparse-MAML code)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [n, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        return self.blocks(x).mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
