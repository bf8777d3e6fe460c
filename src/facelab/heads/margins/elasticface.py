"""ElasticFace (Boutros et al. 2022, "ElasticFace: elastic margin loss for deep face recognition":
per-sample margins m_i ~ N(m, σ) in ArcFace's cos(θ_y + m_i) or CosFace's cos θ_y - m_i, and the
"+" variants)."""

import math

import torch
from torch import Tensor

from facelab.heads.margins.base import Margin, arc_target


class _ElasticFace(Margin):
    """Shared margin drawing. Training mode: m_i = m + σ·randn(B) from torch's global RNG, in the
    dtype and on the device of the target cosines, every forward. Eval mode: m_i = m (the mean
    margin).

    `plus` (ElasticFace+): the drawn margins are sorted ascending and assigned by rank, the smallest
    to the sample with the highest target cosine (ties in cos θ_y keep batch order). The official
    code instead indexes the sorted margins by the sort permutation (`margin[idx]`), which is not an
    assignment by rank; we follow the paper's description. σ = None takes the paper's σ for the
    variant.
    """

    sigmas: tuple[float, float] = (0.05, 0.05)  # (plain, plus)

    def setup(self, s: float, m: float, sigma: float | None, plus: bool, m_high: float) -> None:
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0, m_high)
        self.plus = self.flag("plus", plus)
        self.sigma = (
            self.sigmas[int(self.plus)] if sigma is None else self.real("sigma", sigma, 0.0)
        )

    def draw(self, target_cos: Tensor) -> Tensor:
        """Per-sample margins [B]."""
        if not self.training:
            return torch.full_like(target_cos, self.m)
        margins = self.m + self.sigma * torch.randn(
            target_cos.shape, dtype=target_cos.dtype, device=target_cos.device
        )  # [B]
        if self.plus:
            # highest cos first
            order = torch.argsort(target_cos.detach(), descending=True, stable=True)
            rank = torch.argsort(order)  # [B], rank of each sample
            margins = margins.sort().values[rank]
        return margins


class ElasticArcFace(_ElasticFace):
    """ElasticFace-Arc(+): target `s·cos(θ_y + m_i)` with ArcFace's fallback per sample (so σ = 0
    is `arcface` exactly) (METHODS.md table, `elasticface_arc`). σ: 0.05, plus 0.0175.
    `fallback=False`: cos(θ_y + m_i) everywhere, as the official code."""

    name = "elasticface_arc"
    sigmas = (0.05, 0.0175)

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.5,
        sigma: float | None = None,
        plus: bool = False,
        fallback: bool = True,
    ) -> None:
        super().__init__()
        self.setup(s, m, sigma, plus, math.pi / 2)
        self.fallback = self.flag("fallback", fallback)

    def target(self, target_cos: Tensor) -> Tensor:
        return arc_target(target_cos, self.draw(target_cos), fallback=self.fallback)  # [B]


class ElasticCosFace(_ElasticFace):
    """ElasticFace-Cos(+): target `s·(cos θ_y - m_i)` (METHODS.md table, `elasticface_cos`).
    σ: 0.05, plus 0.02."""

    name = "elasticface_cos"
    sigmas = (0.05, 0.02)

    def __init__(
        self, s: float = 64.0, m: float = 0.35, sigma: float | None = None, plus: bool = False
    ) -> None:
        super().__init__()
        self.setup(s, m, sigma, plus, math.inf)

    def target(self, target_cos: Tensor) -> Tensor:
        return target_cos - self.draw(target_cos)  # [B]
