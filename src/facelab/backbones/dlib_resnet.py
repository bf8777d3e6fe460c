"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`) as a torch module.

The network of dlib's examples/dnn_face_recognition_ex.cpp (`anet_type`): a 29-convolution ResNet
(He et al. 2016) on 150x150 RGB face chips (dlib's `get_face_chip`, 5-point landmarks, padding
0.25), trained by Davis King with dlib's metric loss (`loss_metric`: pairs of descriptors pushed
below / above distance 0.6 by a margin 0.04), 128-d un-normalised descriptors; same person when
the Euclidean distance is below 0.6. LFW 99.38% as published by dlib.

Layer for layer as dlib computes it:

- dlib's `affine` layers (its batch norms at test time) are per-channel `gamma * x + beta`;
- dlib's default paddings: convolutions and pools with stride 2 have none (150 -> 72 -> 35), those
  with stride 1 have size // 2;
- `ares_down` (a downsampling residual): the residual branch is two 3x3 convolutions, the first
  with stride 2; the shortcut is a 2x2 average pool with stride 2, no projection. dlib's
  `add_prev` adds tensors of different sizes by zero-extending both to the larger in every
  dimension (channels 32 -> 64, and 8x8 -> 3x3 vs 4x4, 4x4 -> 1x1 vs 2x2: the residual branch
  fills only the top-left corner).

Input: dlib's `input_rgb_image_sized<150>` gives (pixel - mean_rgb) / 256 with mean_rgb
(122.782, 117.001, 104.298); in facelab's (x/255 - mean)/std form that is mean = mean_rgb / 255,
std = 256 / 255 (`dlib_preprocess`), exact up to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INPUT_SIZE = 150  # dlib's face chips: 150 x 150 RGB
EMBEDDING_SIZE = 128
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # input_rgb_image's defaults, also in the v1 file

# (channels, downsampling first block?, number of blocks) in forward order: dlib's alevel4..0
STAGES: tuple[tuple[int, bool, int], ...] = (
    (32, False, 3),
    (64, True, 4),
    (128, True, 3),
    (256, True, 3),
    (256, True, 1),
)


def dlib_preprocess(mean_rgb: tuple[float, float, float] = DLIB_MEAN_RGB) -> dict:
    """facelab's preprocessing record for dlib's input layer: (x/255 - m/255) / (256/255) ==
    (x - m)/256, on RGB 150x150 chips."""
    return {"size": INPUT_SIZE, "colour": "RGB", "mean": [m / 255.0 for m in mean_rgb],
            "std": 256.0 / 255.0}


class Affine(nn.Module):
    """Per-channel `weight * x + bias` (dlib's `affine_` in conv mode: a frozen batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _add_zero_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: a + b after zero-extending both [B, C, H, W] at the end of every
    dimension to the larger size."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def extend(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1:] == (c, h, w):
            return t
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return extend(a) + extend(b)


class DlibResidual(nn.Module):
    """dlib's `ares` / `ares_down`: relu(shortcut(x) + affine(conv(relu(affine(conv(x)))))),
    shortcut x or avg_pool<2,2,2,2>(x)."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        pad = 0 if down else 1                        # dlib: no padding when stride != 1
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, pad)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.affine1(self.conv1(x)))
        y = self.affine2(self.conv2(y))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_extended(shortcut, y))


class DlibResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1: [B, 3, 150, 150] ((x - mean_rgb)/256, RGB) ->
    [B, 128] descriptors, dlib's `anet_type`."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, 2, 0)
        self.affine1 = Affine(32)
        blocks, in_channels = [], 32
        for channels, down, count in STAGES:
            for i in range(count):
                blocks.append(DlibResidual(in_channels, channels, down and i == 0))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, embedding_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.affine1(self.conv1(x)))        # [B, 32, 72, 72]
        x = F.max_pool2d(x, 3, 2)                      # [B, 32, 35, 35]
        x = self.blocks(x)                             # [B, 256, 2, 2]
        return self.fc(x.mean(dim=(2, 3)))             # [B, 128]


def dlib_resnet(embedding_size: int = EMBEDDING_SIZE) -> DlibResNet:
    """Registry factory (untrained): dlib's face-recognition ResNet architecture."""
    return DlibResNet(embedding_size)
