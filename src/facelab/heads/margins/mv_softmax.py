"""MV-Softmax (Wang et al. 2020, "Mis-classified vector guided softmax loss for face recognition":
the re-weighting h(t, θ_j, I_k) of the mis-classified non-target logits).

Target as CosFace (`mv_am`) or ArcFace (`mv_arc`); every non-target j whose cosine exceeds the
margined target cosine f(θ_y) (a mis-classified vector) is emphasised: "adaptive"
`(t+1)·cos θ_j + t`, "fixed" `cos θ_j + t`, both then scaled by s.

The original code uses m = 0.35 for both targets and easy_margin on; facelab's defaults are
METHODS.md's (mv_am m = 0.35, mv_arc m = 0.5) with easy_margin off: set m and easy_margin to match.
"""

import math

import torch
from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin, arc_target, cos_add, hard_negatives, replace_target

MODES = ("adaptive", "fixed")


class _MVSoftmax(Margin):
    """Shared forward; subclasses give `margined(target_cos)` (the mask threshold) and `target`."""

    def setup(self, s: float, m: float, t: float, mode: str, m_high: float) -> None:
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0, m_high)
        self.t = self.real("t", t, 0.0)
        if mode not in MODES:
            raise self.error("mode", mode, f"must be one of {', '.join(MODES)}")
        self.mode = mode

    def margined(self, target_cos: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, c: Cosines) -> Tensor:
        hard = hard_negatives(c, self.margined(c.target_cos))  # [B, C]
        boost = (self.t + 1.0) * c.cos + self.t if self.mode == "adaptive" else c.cos + self.t
        emphasised = torch.where(hard, boost, c.cos)  # [B, C]
        return self.s * replace_target(emphasised, c.labels, self.target(c.target_cos))


class MVAM(_MVSoftmax):
    """MV-AM-Softmax: target `s·(cos θ_y - m)`, f(θ_y) = cos θ_y - m (METHODS.md table,
    `mv_am`).

    `easy_margin` (off here): the margin applies only where cos θ_y > m, FaceX-Zoo's
    `where(gt > margin, gt - margin, gt)`: target `s·cos θ_y` elsewhere. The original code
    (SV-X-Softmax) has easy_margin on by default and switches at cos θ_y > 0 instead; the two
    differ only for 0 < cos θ_y <= m. The mis-classification mask compares with cos θ_y - m either
    way, as both codes do.
    """

    name = "mv_am"

    def __init__(
        self,
        s: float = 32.0,
        m: float = 0.35,
        t: float = 0.2,
        mode: str = "adaptive",
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        self.setup(s, m, t, mode, math.inf)
        self.easy_margin = self.flag("easy_margin", easy_margin)

    def margined(self, target_cos: Tensor) -> Tensor:
        return target_cos - self.m  # [B]

    def target(self, target_cos: Tensor) -> Tensor:
        margined = target_cos - self.m  # [B]
        if self.easy_margin:
            return torch.where(target_cos > self.m, margined, target_cos)
        return margined


class MVArc(_MVSoftmax):
    """MV-Arc-Softmax: target `s·cos(θ_y + m)` with ArcFace's fallback, or `easy_margin` (the
    original code's default, kept as an option) (METHODS.md table, `mv_arc`). `fallback=False`:
    cos(θ_y + m) everywhere, as the original and FaceX-Zoo code without easy_margin.

    The mis-classification mask compares with cos(θ_y + m) before the fallback / easy-margin
    switch, as the original code and CurricularFace do; the two differ only where θ_y + m > π (or
    cos θ_y <= 0).
    """

    name = "mv_arc"

    def __init__(
        self,
        s: float = 32.0,
        m: float = 0.5,
        t: float = 0.2,
        mode: str = "adaptive",
        easy_margin: bool = False,
        fallback: bool = True,
    ) -> None:
        super().__init__()
        self.setup(s, m, t, mode, math.pi / 2)
        self.easy_margin = self.flag("easy_margin", easy_margin)
        self.fallback = self.flag("fallback", fallback)

    def margined(self, target_cos: Tensor) -> Tensor:
        return cos_add(target_cos, self.m)  # [B]

    def target(self, target_cos: Tensor) -> Tensor:
        return arc_target(target_cos, self.m, self.easy_margin, self.fallback)  # [B]
