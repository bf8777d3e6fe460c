"""MagFace (Meng et al. 2021, "MagFace: a universal representation for face recognition and quality
assessment": L = CE with target cos(θ_y + m(a)) + λ_g·g(a))."""

import math
import warnings

from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin, arc_target, replace_target


class MagFace(Margin):
    """Magnitude-aware angular margin: target `s·cos(θ_y + m(a))` (METHODS.md table, `magface`).

    a = clamp(|x|, l_a, u_a), not detached; m(a) = k·(a - l_a) + l_m with
    k = (u_m - l_m)/(u_a - l_a); extra loss λ_g·mean_i g(a_i), g(a) = 1/a + a/u_a². `easy_margin`
    (on, as the official code): the margin applies only where cos θ_y > 0; off: ArcFace's fallback
    with the per-sample m(a) (`fallback=False`: cos(θ_y + m(a)) everywhere). The theory needs
    λ_g >= s·k·u_a²·l_a²/(u_a² - l_a²) (≈ 22.6 for the defaults); a smaller λ_g gives a warning.
    The quality score of an embedding is a = |x|
    (`facelab.eval.protocols.quality.feature_norm_quality`).
    """

    name = "magface"

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
        fallback: bool = True,
    ) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.l_a = self.real("l_a", l_a, 0.0, open_low=True)
        self.u_a = self.real("u_a", u_a, self.l_a, open_low=True)
        self.l_m = self.real("l_m", l_m, 0.0, math.pi / 2)
        self.u_m = self.real("u_m", u_m, self.l_m, math.pi / 2)
        self.lambda_g = self.real("lambda_g", lambda_g, 0.0)
        self.easy_margin = self.flag("easy_margin", easy_margin)
        self.fallback = self.flag("fallback", fallback)
        self.slope = (self.u_m - self.l_m) / (self.u_a - self.l_a)
        bound = self.s * self.slope * self.u_a**2 * self.l_a**2 / (self.u_a**2 - self.l_a**2)
        if self.lambda_g < bound:
            warnings.warn(
                f"margin 'magface': lambda_g={self.lambda_g:g} is below the theory's bound "
                f"s·k·u_a²·l_a²/(u_a²-l_a²) = {bound:.4g}; "
                "the feature norm may not reflect quality",
                stacklevel=2,
            )

    def norms(self, c: Cosines) -> Tensor:
        return c.norms.clamp(self.l_a, self.u_a)  # [B], a

    def margins(self, a: Tensor) -> Tensor:
        return self.slope * (a - self.l_a) + self.l_m  # [B], m(a)

    def forward(self, c: Cosines) -> Tensor:
        m = self.margins(self.norms(c)).to(c.target_cos.dtype)  # [B]
        target = arc_target(c.target_cos, m, self.easy_margin, self.fallback)  # [B]
        return self.s * replace_target(c.cos, c.labels, target)  # [B, C]

    def regularizer(self, c: Cosines) -> Tensor:
        a = self.norms(c)  # [B]
        return self.lambda_g * (1.0 / a + a / self.u_a**2).mean()
