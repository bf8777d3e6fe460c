"""NormFace (Wang et al. 2017, "NormFace: L2 hypersphere embedding for face verification")."""

from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin


class NormFace(Margin):
    """Normalised softmax without margin: every logit is `s·cos θ_j` (METHODS.md table,
    `normface`)."""

    name = "normface"

    def __init__(self, s: float = 64.0) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)

    def target(self, target_cos: Tensor) -> Tensor:
        return target_cos  # [B]

    def forward(self, c: Cosines) -> Tensor:
        return self.s * c.cos  # [B, C]; the target column needs no replacement
