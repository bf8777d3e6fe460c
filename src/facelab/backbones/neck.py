"""The embedding neck after the last feature map (METHODS.md, "Architecture pieces").

ArcFace-style "E" output (Deng et al. 2019, Sec. 3.2): BN2d -> Dropout -> Flatten -> Linear ->
BN1d. The last BN1d decides how feature norms behave, which matters for norm-aware heads (MagFace,
AdaFace):

- "insightface": weight frozen at 1 (requires_grad False), bias learnable (the insightface
  trainers);
- "none": `affine=False`, no parameters (AdaFace's backbones);
- "affine": weight and bias both learnable (plain PyTorch BN1d).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facelab.errors import FacelabError

FC_BN_MODES = ("insightface", "none", "affine")


def check_dropout(dropout: float) -> float:
    """Return `dropout` as a float or raise FacelabError when it is outside [0, 1)."""
    if not 0.0 <= float(dropout) < 1.0:
        raise FacelabError(f"backbone dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def embedding_bn(embedding_size: int, fc_bn: str = "insightface") -> nn.BatchNorm1d:
    """The final BatchNorm1d of an embedding, configured by `fc_bn` (see the module docstring)."""
    if fc_bn not in FC_BN_MODES:
        raise FacelabError(f"backbone fc_bn must be one of {', '.join(FC_BN_MODES)}; got {fc_bn!r}")
    bn = nn.BatchNorm1d(embedding_size, eps=1e-5, affine=fc_bn != "none")
    if fc_bn == "insightface":
        nn.init.ones_(bn.weight)
        bn.weight.requires_grad_(False)
    return bn


class Neck(nn.Module):
    """BN2d -> Dropout(p) -> Flatten -> Linear(C·H·W, d) -> BN1d: [B, C, H, W] -> [B, d]."""

    def __init__(
        self,
        in_channels: int,
        spatial: int,
        embedding_size: int = 512,
        dropout: float = 0.0,
        fc_bn: str = "insightface",
    ) -> None:
        super().__init__()
        self.spatial = spatial
        self.bn = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.dropout = nn.Dropout(p=check_dropout(dropout))
        self.fc = nn.Linear(in_channels * spatial * spatial, embedding_size)
        self.features = embedding_bn(embedding_size, fc_bn)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.spatial, self.spatial):
            raise FacelabError(
                f"neck expects a {self.spatial}x{self.spatial} feature map, got "
                f"{tuple(x.shape[-2:])}; the backbone input must be 112x112"
            )
        x = self.dropout(self.bn(x))  # [B, C, H, W]
        x = self.fc(torch.flatten(x, 1))  # [B, d]
        return self.features(x)  # [B, d]
