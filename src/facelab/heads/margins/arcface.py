"""ArcFace (Deng et al. 2019, "ArcFace: additive angular margin loss for deep face recognition",
Eq. 3)."""

import math

import torch
from torch import Tensor

from facelab.heads.margins.base import Margin, cos_add


class ArcFace(Margin):
    """Additive angular margin: target logit `s·cos(θ_y + m)` (METHODS.md table, `arcface`,
    m = m2).

    Where `θ_y + m > π` (cos θ_y <= cos(π - m)) the logit falls back to `cos θ_y - m·sin m`,
    the `th`/`mm` of the original implementation, which keeps it monotone in θ_y.
    `easy_margin`: margin only where cos θ_y > 0, plain cos θ_y elsewhere (no fallback).
    `straight_through`: the value carries the margin, the gradient is the one of `s·cos θ_y` (as
    the current insightface PyTorch trainer, which edits the logits under no_grad). Default: exact
    gradient.
    cos(θ + m) is computed as cos θ·cos m - sin θ·sin m (`cos_add`): at |cos θ| = 1 exactly
    the clamp makes the value off by at most 1e-7 and the gradient s·cos m (finite).
    """

    name = "arcface"

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0, math.pi / 2)
        self.easy_margin = self.flag("easy_margin", easy_margin)
        self.straight_through = self.flag("straight_through", straight_through)
        self.th = math.cos(math.pi - self.m)  # below this cos, θ + m would pass π
        self.mm = self.m * math.sin(self.m)

    def target(self, target_cos: Tensor) -> Tensor:
        margined = cos_add(target_cos, self.m)  # [B], cos(θ_y + m)
        if self.easy_margin:
            out = torch.where(target_cos > 0, margined, target_cos)
        else:
            out = torch.where(target_cos > self.th, margined, target_cos - self.mm)
        if self.straight_through:
            out = target_cos + (out - target_cos).detach()
        return out
