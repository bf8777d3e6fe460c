"""ArcFace (Deng et al. 2019, "ArcFace: additive angular margin loss for deep face recognition",
Eq. 3)."""

import math

from torch import Tensor

from facelab.heads.margins.base import Margin, arc_target


class ArcFace(Margin):
    """Additive angular margin: target logit `s·cos(θ_y + m)` (METHODS.md table, `arcface`,
    m = m2).

    Where `θ_y + m > π` (cos θ_y <= cos(π - m)) the logit falls back to `cos θ_y - m·sin m`,
    the `th`/`mm` of the original implementation, which keeps it monotone in θ_y.
    `fallback=False`: cos(θ_y + m) everywhere, as insightface's heads (it turns back up past π).
    `easy_margin`: margin only where cos θ_y > 0, plain cos θ_y elsewhere (no fallback).
    `straight_through`: the value carries the margin, the gradient is the one of `s·cos θ_y` (as
    the current insightface PyTorch trainer, which edits the logits under no_grad). Default: exact
    gradient. `straight_through=True, fallback=False` is insightface's arcface_torch head
    (`ArcFace` and `CombinedMarginLoss(s, 1.0, m, 0.0)`).
    cos(θ + m) is computed as cos θ·cos m - sin θ·sin m (`cos_add`): at |cos θ| = 1 exactly
    the clamp makes the value off by at most sqrt(2e-7)·sin m ≈ 2e-4 (before s) and the gradient
    s·cos m (finite). With `straight_through` the value needs no gradient: it is computed as
    insightface does, cos(acos(cos θ) + m), exact at |cos θ| = 1 too.
    """

    name = "arcface"

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        straight_through: bool = False,
        fallback: bool = True,
    ) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0, math.pi / 2)
        self.easy_margin = self.flag("easy_margin", easy_margin)
        self.straight_through = self.flag("straight_through", straight_through)
        self.fallback = self.flag("fallback", fallback)

    def target(self, target_cos: Tensor) -> Tensor:
        if not self.straight_through:
            return arc_target(target_cos, self.m, self.easy_margin, self.fallback)  # [B]
        c = target_cos.detach()
        value = arc_target(c, self.m, self.easy_margin, self.fallback, value_only=True)  # [B]
        return target_cos + (value - c)
