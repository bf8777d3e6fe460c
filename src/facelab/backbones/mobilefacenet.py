"""MobileFaceNet (Chen et al. 2018, "MobileFaceNets", Table 1) with the global depthwise conv head.

    112²x3   conv3x3 64, stride 2                       -> 56²x64
    56²x64   depthwise conv3x3 64                        -> 56²x64
    56²x64   bottleneck t=2, c=64,  n=5, first stride 2 -> 28²x64
    28²x64   bottleneck t=4, c=128, n=1, stride 2       -> 14²x128
    14²x128  bottleneck t=2, c=128, n=6                  -> 14²x128
    14²x128  bottleneck t=4, c=128, n=1, stride 2       -> 7²x128
    7²x128   bottleneck t=2, c=128, n=2                  -> 7²x128
    7²x128   conv1x1 512                                 -> 7²x512
    7²x512   linear GDConv7x7 (depthwise, no activation) -> 1²x512
    512      linear 1x1 (here nn.Linear) + BN1d          -> d

Bottlenecks are MobileNetV2 inverted residuals (expand 1x1 -> depthwise 3x3 -> linear 1x1
projection, identity shortcut when stride 1 and widths match); every non-linearity is PReLU.
0.99 M parameters with d=128 and about 0.22 G MACs at 112x112 (0.45 GFLOPs counting one MAC as two
FLOPs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facelab.backbones.neck import check_dropout, embedding_bn

# (expansion t, output channels c, repeats n, first stride s) per row of Table 1.
MFN_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


def conv_bn(
    in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
    padding: int | None = None,
) -> nn.Sequential:
    """conv(k x k, no bias, "same" padding unless given) -> BN -> PReLU (PReLU left out for linear
    layers)."""
    pad = k // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand (t) -> depthwise 3x3 (stride) -> linear 1x1 projection."""

    def __init__(self, in_ch: int, out_ch: int, t: int, stride: int) -> None:
        super().__init__()
        hidden = in_ch * t
        self.body = nn.Sequential(
            conv_bn(in_ch, hidden, 1),
            conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            conv_bn(hidden, out_ch, 1, act=False),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)  # [B, out_ch, H/stride, W/stride]
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """[B, 3, 112, 112] -> un-normalised embedding [B, embedding_size]."""

    def __init__(self, embedding_size: int = 512, dropout: float = 0.0,
                 fc_bn: str = "insightface") -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 3, stride=2), conv_bn(64, 64, 3, groups=64))
        blocks: list[nn.Module] = []
        in_ch = 64
        for t, c, n, s in MFN_SETTING:
            for i in range(n):
                blocks.append(Bottleneck(in_ch, c, t, s if i == 0 else 1))
                in_ch = c
        self.blocks = nn.Sequential(*blocks)
        self.conv = conv_bn(in_ch, 512, 1)
        # linear global depthwise conv
        self.gdc = conv_bn(512, 512, 7, groups=512, act=False, padding=0)
        self.dropout = nn.Dropout(p=check_dropout(dropout))
        self.fc = nn.Linear(512, embedding_size, bias=False)
        self.features = embedding_bn(embedding_size, fc_bn)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))  # [B, 128, 7, 7]
        x = self.gdc(self.conv(x))  # [B, 512, 1, 1]
        x = self.fc(self.dropout(torch.flatten(x, 1)))  # [B, d]
        return self.features(x)  # [B, d]


def mobilefacenet(embedding_size: int = 512, dropout: float = 0.0,
                  fc_bn: str = "insightface") -> MobileFaceNet:
    """MobileFaceNet with a GDC head (Chen et al. 2018)."""
    return MobileFaceNet(embedding_size, dropout, fc_bn)
