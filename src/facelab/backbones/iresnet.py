"""IResNet-18/34/50/100/200 for 112x112 faces (METHODS.md, "Architecture pieces").

The "LResNet-E-IR" backbone of ArcFace (Deng et al. 2019, Sec. 3.2 / Fig. 7): a 3x3 stride-1 stem
(conv 64, BN, PReLU) keeps 112x112; four stages of improved residual units
BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, widths 64/128/256/512, each stage halving the
resolution in its first unit (whose shortcut is a 1x1 stride-2 conv + BN), down to 7x7; then the
neck (neck.py). Forward MACs at 112x112: r18 2.6 G, r50 6.3 G, r100 12.1 G.
"""

from __future__ import annotations

from torch import Tensor, nn

from facelab.backbones.neck import Neck

IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """Improved residual unit: BN-conv-BN-PReLU-conv-BN plus the (projected) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch, eps=1e-5),
            conv3x3(in_ch, out_ch),
            nn.BatchNorm2d(out_ch, eps=1e-5),
            nn.PReLU(out_ch),
            conv3x3(out_ch, out_ch, stride),
            nn.BatchNorm2d(out_ch, eps=1e-5),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=1e-5),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)  # [B, out_ch, H/stride, W/stride]


def make_stage(in_ch: int, out_ch: int, depth: int) -> nn.Sequential:
    """`depth` units; the first halves the resolution and changes the width."""
    units = [IRBlock(in_ch, out_ch, stride=2)]
    units += [IRBlock(out_ch, out_ch) for _ in range(depth - 1)]
    return nn.Sequential(*units)


class IResNet(nn.Module):
    """[B, 3, 112, 112] -> un-normalised embedding [B, embedding_size]."""

    def __init__(
        self,
        layers: tuple[int, ...],
        embedding_size: int = 512,
        dropout: float = 0.0,
        fc_bn: str = "insightface",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(3, WIDTHS[0]), nn.BatchNorm2d(WIDTHS[0], eps=1e-5),
                                  nn.PReLU(WIDTHS[0]))
        in_chs = (WIDTHS[0],) + WIDTHS[:-1]
        self.stages = nn.ModuleList(make_stage(i, o, d)
                                    for i, o, d in zip(in_chs, WIDTHS, layers, strict=True))
        self.neck = Neck(WIDTHS[-1], 7, embedding_size, dropout=dropout, fc_bn=fc_bn)
        init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # [B, 64, 112, 112]
        for stage in self.stages:
            x = stage(x)  # [B, 512, 7, 7] after the last
        return self.neck(x)  # [B, d]


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """Kaiming-normal convs; optionally zero the last BN of each residual body (Goyal et al.
    2017)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, IRBlock):
                nn.init.zeros_(m.body[-1].weight)


def _factory(name: str):
    def build(
        embedding_size: int = 512,
        dropout: float = 0.0,
        fc_bn: str = "insightface",
        zero_init_residual: bool = False,
    ) -> IResNet:
        return IResNet(IRESNET_LAYERS[name], embedding_size, dropout, fc_bn, zero_init_residual)

    build.__name__ = name
    build.__doc__ = (f"{name}: IResNet with stage depths {IRESNET_LAYERS[name]} "
                     "(ArcFace, Deng et al. 2019).")
    return build


iresnet18 = _factory("iresnet18")
iresnet34 = _factory("iresnet34")
iresnet50 = _factory("iresnet50")
iresnet100 = _factory("iresnet100")
iresnet200 = _factory("iresnet200")
