"""AdaFace (Kim et al. 2022, "AdaFace: quality adaptive margin for face recognition": target
cos(θ_y + g_angle) - g_add with margins driven by the batch-normalised feature norm)."""

import math

import torch
from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin, replace_target, safe_acos

NORM_CLIP = (0.001, 100.0)  # the official code clips |x| to this range before the statistics


class AdaFace(Margin):
    """Quality-adaptive margin (METHODS.md table, `adaface`):
        target = s·(cos(clip(θ_y + g_angle, ε, π - ε)) - g_add),
        g_angle = -m·z,  g_add = m + m·z,
        z = clip(h·(a - μ)/(σ + ε), -1, 1),  a = clip(|x|, 0.001, 100), detached.
    μ and σ are buffers (μ₀ = 20, σ₀ = 100, saved in the state dict). Each training-mode
    forward first updates them, μ ← α·mean(a) + (1-α)·μ, σ ← α·std(a) + (1-α)·σ
    (unbiased std; skipped for a batch of one sample, whose std is undefined), then uses them; eval
    mode uses them unchanged.
    The clip of |x| to [0.001, 100] follows the official code (METHODS.md omits it), and so does
    the clamp of every cosine, target and non-target, to [-1 + ε, 1 - ε] before the margin (the
    official code's "for stability" clamp; no gradient flows past it).
    h = 0 gives z = 0: CosFace(m) where |cos θ_y| <= 1 - ε (outside, the cosine clamp moves the
    logit by at most ε·s).
    The quality score of an embedding is a = |x|
    (`facelab.eval.protocols.quality.feature_norm_quality`).
    """

    name = "adaface"

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        alpha: float = 0.01,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0, math.pi / 2)
        self.h = self.real("h", h, 0.0)
        self.alpha = self.real("alpha", alpha, 0.0, 1.0)
        self.eps = self.real("eps", eps, 0.0, 0.1, open_low=True)
        self.register_buffer("mu", torch.tensor(20.0))
        self.register_buffer("sigma", torch.tensor(100.0))

    @torch.no_grad()
    def update(self, a: Tensor) -> None:
        """EMA of the batch mean and unbiased std of the clipped norms a [B]; out of place."""
        self.mu = (self.alpha * a.mean() + (1.0 - self.alpha) * self.mu).to(self.mu.dtype)
        if a.numel() > 1:
            sigma = self.alpha * a.std() + (1.0 - self.alpha) * self.sigma
            self.sigma = sigma.to(self.sigma.dtype)

    def forward(self, c: Cosines) -> Tensor:
        a = c.norms.detach().clamp(*NORM_CLIP)  # [B]
        if self.training:
            self.update(a)
        mu, sigma = self.mu.to(a.dtype), self.sigma.to(a.dtype)
        z = (self.h * (a - mu) / (sigma + self.eps)).clamp(-1.0, 1.0).to(c.target_cos.dtype)  # [B]
        bound = 1.0 - self.eps
        cos = c.cos.clamp(-bound, bound)  # [B, C]
        target_cos = c.target_cos.clamp(-bound, bound)  # [B]
        theta = (safe_acos(target_cos) - self.m * z).clamp(self.eps, math.pi - self.eps)  # [B]
        target = torch.cos(theta) - (self.m + self.m * z)  # [B]
        return self.s * replace_target(cos, c.labels, target)  # [B, C]
