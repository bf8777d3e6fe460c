"""SphereFace (Liu et al. 2017, "SphereFace: deep hypersphere embedding", Eq. 7) on normalised
features."""

import math

import torch
from torch import Tensor

from facelab.heads.margins.base import Margin, safe_acos


class SphereFace(Margin):
    """Multiplicative angular margin: target logit `s·ψ(θ_y)` (METHODS.md table, `sphereface`).

    `ψ(θ) = (-1)^k cos(m1·θ) - 2k` for θ in [kπ/m1, (k+1)π/m1]: continuous and monotone
    decreasing on [0, π] for any real m1 >= 1, applied to normalised features with a fixed scale
    (SphereFace-R style). The 2017 paper's un-normalised, λ-annealed variant is not implemented.
    """

    name = "sphereface"

    def __init__(self, s: float = 64.0, m1: float = 1.35) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.m1 = self.real("m1", m1, 1.0)

    def target(self, target_cos: Tensor) -> Tensor:
        angle = self.m1 * safe_acos(target_cos)  # [B], m1·θ
        k = torch.floor(angle.detach() / math.pi)  # [B] piece index, no gradient
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
        return sign * torch.cos(angle) - 2.0 * k
