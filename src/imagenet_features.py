"""Plain ImageNet features of photos: what adding landmarks (:mod:`src.new_landmarks`) names new landmarks with.

A trained model's own features are tuned to *its* landmarks, so photos of landmarks it never saw
crowd together there. A backbone as trained on ImageNet, never fine-tuned, keeps them apart: landmarks
a model never saw are named by the nearest class mean of a few photos each far more often with
EfficientNet-Lite0's features at 224 px than with the model's own (``bench/new_landmark_features.py``
measures both, docs/adding-landmarks.md). So every export keeps these features of the photos it
remembers (``general_memory``). A transfer model read at its backbone's native size computes them from its own
first stages (:mod:`src.shared_trunk`); any other export's model with added landmarks carries this extractor beside
its base.
"""

from __future__ import annotations

import torch
from torch import nn

from .factory import create_model, data_defaults
from .preprocessing import resize_and_crop

GENERAL_BACKBONE = "efficientnet_lite0"  # chosen by bench/new_landmark_features.py among the shipped ImageNet backbones
GENERAL_SIZE = 224  # its native input size (smaller inputs name new landmarks less often, same bench)
PHOTOS_PER_PASS = 4  # on a CPU: 4 photos keep the largest activation at 224 px near 20 MB, a block glibc keeps


class ImageNetFeatures(nn.Module):
    """Raw photos ``(B, 3, H, W)`` or ``(3, H, W)`` (uint8 0-255 or float 0-1, any size) -> the ImageNet
    backbone's features of their centre square at ``size`` px. Scriptable with ``torch.jit.script``.

    The network runs in channels-last memory order, in which a CPU runs its depthwise convolutions
    much faster (same features to float rounding). On a CPU it takes a batch ``photos_per_pass`` photos at a
    time, with the same features: in a process left as glibc comes (a platform's own that loads the file), every
    block over 32 MB is mapped afresh from the system, a whole batch's activations at 224 px are such blocks, and a
    batch of 50 takes 2.5 times as long as passes of 4; with freed memory kept (:mod:`src.allocator`) passes of 4
    are still 1.2 times as fast (``bench/passes.py``, docs/adding-landmarks.md). 0 runs the batch in one pass, as
    ONNX export needs."""

    def __init__(self, backbone: str = GENERAL_BACKBONE, size: int = GENERAL_SIZE,
                 photos_per_pass: int = PHOTOS_PER_PASS) -> None:
        super().__init__()
        network = create_model(backbone, 1, pretrained=True).backbone.eval().requires_grad_(False)
        self.backbone = network.to(memory_format=torch.channels_last)
        self.backbone_name: str = backbone
        self.resize_size: int = int(size)
        self.photos_per_pass: int = int(photos_per_pass)
        defaults = data_defaults(backbone)
        self.register_buffer("mean", torch.tensor(defaults.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(defaults.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        with torch.no_grad():
            x = (resize_and_crop(x, self.resize_size, self.resize_size) - self.mean) / self.std
            x = x.contiguous(memory_format=torch.channels_last)
            if self.photos_per_pass > 0 and not x.is_cuda and x.shape[0] > self.photos_per_pass:
                return torch.cat([self.backbone(part) for part in torch.split(x, self.photos_per_pass)])
            return self.backbone(x)


class CombinedFeatures(nn.Module):
    """Raw photos -> the features a model with added landmarks classifies: its ``base`` export's own
    (the first ``base_size`` columns), then plain ImageNet ones from a second network (``general``, an
    :class:`ImageNetFeatures`).

    One photo, as the app, ``predict`` and a quiet service classify, runs through the two networks side by side
    (``torch.jit.fork``): neither keeps two CPU cores busy with one photo alone. A batch keeps them busy, and beside
    the processes that decode it ran no faster side by side, so it runs one network after the other
    (docs/adding-landmarks.md measures both)."""

    def __init__(self, base: torch.jit.ScriptModule, general: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.general = general
        self.base_size: int = int(base.memory_features.shape[1])
        self.resize_size: int = max(int(base.resize_size), int(general.resize_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 or x.shape[0] == 1:
            general = torch.jit.fork(self.general, x)
            return torch.cat([self.base.features_and_logits(x)[0], torch.jit.wait(general)], dim=1)
        return torch.cat([self.base.features_and_logits(x)[0], self.general(x)], dim=1)
