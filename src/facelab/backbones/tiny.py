"""`tiny`: a small, fast CPU backbone for tests and the demo (not from a paper).

Designed for training throughput on a couple of CPU cores, where the memory-bound layers at high
resolution (BN, activations, depthwise convs) cost far more than their MACs suggest:

    112²x3  conv4x4 stride 4 ("patchify": each 4x4 patch keeps its fine texture) + BN + ReLU
            -> 28²xw
    28²xw   conv3x3 -> 28²x2w -> conv3x3 s2 -> 14²x4w -> conv3x3 s2 -> 7²x4w (each + BN + ReLU)
            `depth` extra residual units (conv3x3-BN-ReLU-conv3x3-BN + x) at 7x7
    7²x4w   the common neck (neck.py) -> d

With width w=32 (channels 32, 64, 128, 128): about 40 M MACs at 112x112.
"""

from __future__ import annotations

from torch import Tensor, nn

from facelab.backbones.neck import Neck
from facelab.errors import FacelabError


def conv_bn_relu(in_ch: int, out_ch: int, k: int = 3, stride: int = 1,
                 relu: bool = True) -> nn.Sequential:
    """conv(k x k, no bias) -> BN -> ReLU (ReLU left out when `relu` is False)."""
    padding = (k - 1) // 2 if k % 2 else 0
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, stride, padding=padding, bias=False)]
    layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResUnit(nn.Module):
    """x + BN(conv(ReLU(BN(conv(x))))), then ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(ch, ch), conv_bn_relu(ch, ch, relu=False))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))  # [B, C, H, W]


class Tiny(nn.Module):
    """[B, 3, 112, 112] -> un-normalised embedding [B, embedding_size]."""

    def __init__(
        self,
        embedding_size: int = 512,
        width: int = 32,
        depth: int = 0,
        dropout: float = 0.0,
        fc_bn: str = "insightface",
    ) -> None:
        super().__init__()
        if width < 1 or depth < 0:
            raise FacelabError("tiny backbone needs width >= 1 and depth >= 0, got "
                               f"width={width}, depth={depth}")
        w = width
        self.body = nn.Sequential(
            conv_bn_relu(3, w, k=4, stride=4),  # [B, w, 28, 28]
            conv_bn_relu(w, 2 * w),  # [B, 2w, 28, 28]
            conv_bn_relu(2 * w, 4 * w, stride=2),  # [B, 4w, 14, 14]
            conv_bn_relu(4 * w, 4 * w, stride=2),  # [B, 4w, 7, 7]
            *[ResUnit(4 * w) for _ in range(depth)],
        )
        self.neck = Neck(4 * w, 7, embedding_size, dropout=dropout, fc_bn=fc_bn)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.body(x))  # [B, d]


def tiny(
    embedding_size: int = 512, width: int = 32, depth: int = 0, dropout: float = 0.0,
    fc_bn: str = "insightface",
) -> Tiny:
    """Small fast CPU backbone (tests, demo)."""
    return Tiny(embedding_size, width, depth, dropout, fc_bn)
