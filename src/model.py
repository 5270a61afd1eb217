"""The CNN trained from scratch: a small residual network for any class count and input size.

Design (why): a strided stem shrinks the photo early (cheap on a CPU); each stage halves the
resolution and doubles the width with residual blocks (trainable in few epochs thanks to batch
norm and identity shortcuts); global average pooling makes the head independent of the input
size; dropout before the linear classifier fights over-fitting on a few thousand photos.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .preprocessing import DataDefaults

# No pretrained size to match: 160 px keeps full-size photos' detail at about half of 224 px's CPU cost.
# Normalisation is the dataset's own (None).
SCRATCH_DATA_DEFAULTS = DataDefaults(native_size=160)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 strided projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, out_channels, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class MyModel(nn.Module):
    """Residual CNN: ``features`` (stem + stages) -> global pooling -> ``head`` (dropout + linear)."""

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.3,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [conv_bn_relu(3, widths[0], stride=2)]
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if block == 0 and stage > 0 else 1
                layers.append(ResidualBlock(in_channels, width, stride))
                in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_channels, num_classes))
        self.num_classes = num_classes
        self.data_defaults = SCRATCH_DATA_DEFAULTS
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, ResidualBlock):  # start each block close to the identity
                nn.init.zeros_(module.conv2[1].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector ``(B, widths[-1])`` the head classifies (unknown detection reads it too)."""
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
