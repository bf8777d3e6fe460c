"""Combined margin (Deng et al. 2019, ArcFace paper, Eq. 4): SphereFace, ArcFace and CosFace margins
together."""

import math

import torch
from torch import Tensor

from facelab.heads.margins.base import Margin, cos_add, safe_acos


class Combined(Margin):
    """Target logit `s·(cos(m1·θ_y + m2) - m3)` with all three margins honoured (METHODS.md
    table, `combined`).

    Fallback, our choice (the equation is not monotone once m1·θ + m2 passes π): past the
    threshold angle θ_t = (π - m2)/m1 (only when θ_t < π) the target becomes
    `cos θ_y - mm - m3`, ArcFace's th/mm generalised. With φ = π - θ_t (the angular margin at
    θ_t), `mm = max(φ·sin φ, 1 - cos φ)`: φ·sin φ is ArcFace's `m·sin m` (φ = m2 when
    m1 = 1, so combined(1, m, 0) = arcface(m) everywhere), and the lower bound 1 - cos φ guarantees
    the fallback starts at or below the value -1 - m3 reached at θ_t, so the logit is monotone
    decreasing in θ_y on [0, π] for every m1 >= 1. `fallback=False`: cos(m1·θ_y + m2) - m3
    everywhere, the equation as written (no official code has m1 > 1 with a fallback).

    insightface's `CombinedMarginLoss` differs: with m3 > 0 it computes CosFace(m3) and ignores
    m1 and m2; this head honours all three (README, "facelab vs insightface").
    """

    name = "combined"

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        fallback: bool = True,
    ) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m1 = self.real("m1", m1, 1.0)
        self.m2 = self.real("m2", m2, 0.0, math.pi / 2)
        self.m3 = self.real("m3", m3, 0.0)
        self.fallback = self.flag("fallback", fallback)
        theta_t = (math.pi - self.m2) / self.m1
        phi = math.pi - theta_t
        # fallback where cos θ_y <= th
        self.th = math.cos(theta_t) if theta_t < math.pi else -math.inf
        self.mm = max(phi * math.sin(phi), 1.0 - math.cos(phi))

    def target(self, target_cos: Tensor) -> Tensor:
        # same form as ArcFace: exact equalities with arcface(m2) and, for m2 = 0, cosface(m3)
        if self.m1 == 1.0:
            margined = cos_add(target_cos, self.m2)  # [B]
        else:
            margined = torch.cos(self.m1 * safe_acos(target_cos) + self.m2)  # [B]
        if not self.fallback:
            return margined - self.m3
        return torch.where(target_cos > self.th, margined, target_cos - self.mm) - self.m3
