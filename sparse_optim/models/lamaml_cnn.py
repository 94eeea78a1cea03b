"""The La-MAML CNN for CIFAR-100 / TinyImageNet (La-MAML App. F; the official ``pc_cnn``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["LaMAMLConvNet"]


class LaMAMLConvNet(nn.Module):
    """``conv_layers`` 3x3 convolutions of ``channels`` filters (stride 2, padding 1), then two
    fully connected layers of ``hidden`` units and the output layer, ReLU after every hidden layer
    (La-MAML App. F: CIFAR 3 convs + FC 320, TinyImageNet 4 convs + FC 640; 160 filters).

    The output layer holds every task's head (``num_outputs = tasks * classes_per_task``; see
    :class:`~sparse_optim.continual.MultiHeadLoss`). Weights are Kaiming-normal, biases zero (the
    official ``Learner``). ``uint8`` inputs are scaled to [0, 1]; ``mean`` / ``std`` (per channel)
    normalise every input, as the official transforms do.
    """

    def __init__(self, num_outputs: int, *, conv_layers: int = 3, channels: int = 160, hidden: int = 320,
                 in_channels: int = 3, image_size: int = 32, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if conv_layers < 1 or image_size % (2 ** conv_layers):
            raise ValueError(f"image_size ({image_size}) must be divisible by 2**conv_layers ({2 ** conv_layers})")
        layers, c = [], in_channels
        for _ in range(conv_layers):
            layers += [nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.ReLU()]
            c = channels
        side = image_size // 2 ** conv_layers
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(channels * side * side, hidden), nn.ReLU(),
                                        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        mean = torch.zeros(in_channels) if mean is None else torch.tensor(mean, dtype=torch.float32)
        std = torch.ones(in_channels) if std is None else torch.tensor(std, dtype=torch.float32)
        if mean.shape != (in_channels,) or std.shape != (in_channels,) or not bool((std > 0).all()):
            raise ValueError(f"mean and std must hold {in_channels} values (std > 0)")
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.to(self.mean.dtype) / 255.0
        return self.classifier(self.features((x - self.mean) / self.std))
