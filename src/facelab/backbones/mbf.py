"""insightface's MobileFaceNet variants `mbf` and `mbf_large` (arcface_torch's
`backbones/mobilefacenet.py`), so that their trained weights load here
(facelab.interop.insightface).

MobileFaceNets (Chen et al. 2018) are MobileNetV2-style inverted residuals (1x1 expand -> depthwise
3x3 -> linear 1x1 projection, PReLU everywhere) ending in a linear global depthwise conv (GDC)
instead of global average pooling. facelab's `mobilefacenet` is the paper's Table 1 network
(64/128 channels, expansion factors). insightface's variant, which this module reproduces layer for
layer, differs:

- widths: the stem and the 56²/28² stages have 64·scale channels, the 14²/7² stages 128·scale
  (scale 2 for `mbf`: 128/256; scale 4 for `mbf_large`: 256/512);
- each bottleneck's hidden width is fixed (128, 256 or 512), not in_channels x expansion, so with a
  large scale a bottleneck narrows instead of expanding;
- repeats `blocks` (after each stride-2 unit): (1, 4, 6, 2) for `mbf`, (2, 8, 12, 4) for
  `mbf_large`. With blocks[0] == 1 the second layer is a grouped 3x3 conv with 64 groups (for
  scale 2 not depthwise: 2 channels per group); otherwise blocks[0] residual bottlenecks;
- the final BatchNorm1d is a plain affine one (weight learnable, `fc_bn="affine"`), unlike the
  frozen weight of insightface's IResNets.

Layout ([B, C, H, W], scale s; every stride-2 unit is a non-residual bottleneck):

    112²x3      conv3x3 64s stride 2 + BN + PReLU                         -> 56²x64s
    56²x64s     grouped conv3x3 (blocks[0] == 1) or blocks[0] bottlenecks -> 56²x64s
    56²x64s     bottleneck hidden 128, stride 2; blocks[1] x hidden 128   -> 28²x64s
    28²x64s     bottleneck hidden 256, stride 2; blocks[2] x hidden 256   -> 14²x128s
    14²x128s    bottleneck hidden 512, stride 2; blocks[3] x hidden 256   -> 7²x128s
    7²x128s     conv1x1 512 + BN + PReLU                                  -> 7²x512
    7²x512      linear GDConv7x7 (depthwise) + BN                         -> 512
    512         Dropout -> Linear(512, d, no bias) -> BN1d                -> d

Every BN has eps 1e-5. Parameters with d = 512: `mbf` 2,059,520, `mbf_large` 6,314,880 (the
counts of insightface's own modules, GDC, linear and BN1d included). Forward MACs at 112x112
(backbones/flops.py): `mbf` 0.44 G (insightface's "mobilefacenet-0.45G"), `mbf_large` 1.82 G.
insightface has no dropout here; `dropout` (default 0) adds one, without tensors, before the linear
layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facelab.backbones.mobilefacenet import conv_bn
from facelab.backbones.neck import check_dropout, embedding_bn

# (blocks, scale) of insightface's get_mbf / get_mbf_large
MBF_VARIANTS: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "mbf": ((1, 4, 6, 2), 2),
    "mbf_large": ((2, 8, 12, 4), 4),
}
# hidden widths of the stride-2 bottleneck and of the residual ones after it, per stage
STAGE_HIDDEN: tuple[tuple[int, int], ...] = ((128, 128), (256, 256), (512, 256))
FIRST_HIDDEN = 128  # hidden width of the residual bottlenecks of the 56² block (blocks[0] > 1)
FIRST_GROUPS = 64  # groups of the 56² grouped conv (blocks[0] == 1)


class Bottleneck(nn.Module):
    """1x1 conv to `hidden` -> depthwise 3x3 (stride) -> linear 1x1 to `out_ch`; identity shortcut
    when `residual` (stride 1 and equal widths)."""

    def __init__(self, in_ch: int, out_ch: int, hidden: int, stride: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_ch, hidden, 1),
            conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            conv_bn(hidden, out_ch, 1, act=False),
        )
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)  # [B, out_ch, H/stride, W/stride]
        return x + y if self.residual else y


def residual_stack(channels: int, hidden: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(Bottleneck(channels, channels, hidden, residual=True)
                           for _ in range(n)))


class MBF(nn.Module):
    """insightface's MobileFaceNet: [B, 3, 112, 112] -> un-normalised embedding [B, d]."""

    def __init__(self, blocks: tuple[int, int, int, int] = (1, 4, 6, 2), scale: int = 2,
                 embedding_size: int = 512, dropout: float = 0.0, fc_bn: str = "affine") -> None:
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        self.stem = conv_bn(3, c1, 3, stride=2)
        self.first: nn.Module = (conv_bn(c1, c1, 3, groups=FIRST_GROUPS) if blocks[0] == 1
                                 else residual_stack(c1, FIRST_HIDDEN, blocks[0]))
        # each stage: its stride-2 bottleneck, then blocks[k + 1] residual ones
        self.stages = nn.ModuleList()
        for (in_ch, out_ch), (down_hidden, hidden), n in zip(
                ((c1, c1), (c1, c2), (c2, c2)), STAGE_HIDDEN, blocks[1:], strict=True):
            self.stages.append(nn.Sequential(Bottleneck(in_ch, out_ch, down_hidden, stride=2),
                                             *residual_stack(out_ch, hidden, n)))
        self.conv = conv_bn(c2, 512, 1)
        self.gdc = conv_bn(512, 512, 7, groups=512, act=False, padding=0)  # linear GDC
        self.dropout = nn.Dropout(p=check_dropout(dropout))
        self.fc = nn.Linear(512, embedding_size, bias=False)
        self.features = embedding_bn(embedding_size, fc_bn)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(self.stem(x))  # [B, 64s, 56, 56]
        for stage in self.stages:
            x = stage(x)  # [B, 128s, 7, 7] after the last
        x = self.gdc(self.conv(x))  # [B, 512, 1, 1]
        x = self.fc(self.dropout(torch.flatten(x, 1)))  # [B, d]
        return self.features(x)  # [B, d]


def mbf(embedding_size: int = 512, dropout: float = 0.0, fc_bn: str = "affine") -> MBF:
    """insightface's `mbf`: MobileFaceNet (Chen et al. 2018) at scale 2, blocks (1, 4, 6, 2)."""
    blocks, scale = MBF_VARIANTS["mbf"]
    return MBF(blocks, scale, embedding_size, dropout, fc_bn)


def mbf_large(embedding_size: int = 512, dropout: float = 0.0, fc_bn: str = "affine") -> MBF:
    """insightface's `mbf_large`: MobileFaceNet (Chen et al. 2018) at scale 4, blocks
    (2, 8, 12, 4)."""
    blocks, scale = MBF_VARIANTS["mbf_large"]
    return MBF(blocks, scale, embedding_size, dropout, fc_bn)
