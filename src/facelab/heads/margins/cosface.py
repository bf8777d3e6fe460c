"""CosFace / AM-Softmax (Wang et al. 2018, "CosFace: large margin cosine loss", Eq. 4)."""

from torch import Tensor

from facelab.heads.margins.base import Margin


class CosFace(Margin):
    """Additive cosine margin: target logit `s·(cos θ_y - m)` (METHODS.md table, `cosface`,
    m = m3)."""

    name = "cosface"

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m = self.real("m", m, 0.0)

    def target(self, target_cos: Tensor) -> Tensor:
        return target_cos - self.m  # [B]
