"""CurricularFace (Huang et al. 2020, "CurricularFace: adaptive curriculum learning loss for deep
face recognition": target cos(θ_y + m), hard negatives modulated by
N(t, cos θ_j) = cos θ_j·(t + cos θ_j))."""

import torch
from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin, arc_target, cos_add, hard_negatives, replace_target

MOMENTUM = 0.01  # t ← 0.01·mean_i cos θ_{i,y_i} + 0.99·t


class CurricularFace(Margin):
    """Target `s·cos(θ_y + m)` with ArcFace's fallback; every non-target with
    cos θ_j > cos(θ_y + m) (the margined target before the fallback, as the official code) becomes
    `s·cos θ_j·(t + cos θ_j)` (METHODS.md table, `curricularface`).

    t is the buffer `t` (t₀ = 0, saved in the state dict). Each training-mode forward first
    updates it without gradient, t ← 0.01·mean_i cos θ_{i,y_i} + 0.99·t over the whole batch,
    then uses the new value (as the official code); eval mode uses it unchanged.
    `fallback=False`: cos(θ_y + m) everywhere (the official code has the fallback). The mean reads
    `Cosines.target_cos`, already shared across ranks, so every rank holds the same t; rows whose
    target is on another rank still have their local hard negatives modulated.
    """

    name = "curricularface"

    def __init__(self, s: float = 64.0, m: float = 0.5, fallback: bool = True) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0, torch.pi / 2)
        self.fallback = self.flag("fallback", fallback)
        self.register_buffer("t", torch.zeros(()))

    def forward(self, c: Cosines) -> Tensor:
        if self.training:
            mean = c.target_cos.detach().mean().to(self.t.dtype)
            # out of place: no autograd version clash
            self.t = MOMENTUM * mean + (1.0 - MOMENTUM) * self.t
        t = self.t.to(c.cos.dtype)
        hard = hard_negatives(c, cos_add(c.target_cos, self.m))  # [B, C]
        modulated = torch.where(hard, c.cos * (t + c.cos), c.cos)  # [B, C]
        target = arc_target(c.target_cos, self.m, fallback=self.fallback)  # [B]
        return self.s * replace_target(modulated, c.labels, target)
