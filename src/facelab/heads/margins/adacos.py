"""AdaCos (Zhang et al. 2019, "AdaCos: adaptively scaling cosine logits for effectively learning
deep face representations": the fixed and the dynamic scale)."""

import math

import torch
from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin, safe_acos

MODES = ("fixed", "dynamic")


def fixed_scale(num_classes: int) -> float:
    """s = √2·ln(C - 1) (the fixed AdaCos scale), C the number of classes of the whole
    classifier."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


class AdaCos(Margin):
    """No margin, every logit `s·cos θ_j`, with an adaptive scale s (METHODS.md table, `adacos`).

    `num_classes` is C of the whole classifier (not `cos.shape[1]`, which is the local, possibly
    sampled, class count); `build_head` fills it. mode "fixed": s = √2·ln(C - 1). mode "dynamic"
    (the paper's main method): s starts there, then each training-mode forward first updates it,
    without gradient, from the batch and the previous s (the paper's dynamic rule), and uses the new
    value:
        B_avg = mean_i Σ_{k≠y_i} exp(s·cos θ_ik)    (as log-sum-exp, no overflow)
        θ_med = median_i θ_{i,y_i}                  (target angles only; torch.median: the lower
                                                    middle value)
        s ← ln(B_avg) / cos(min(π/4, θ_med))
    s is the buffer `scale`, saved in the state dict; eval mode uses it unchanged. B_avg sums over
    the columns of every rank (`Cosines.sum_over_classes`); under Partial FC over the sampled ones
    only; under DAIL's dataset-aware softmax over the columns of each sample's own softmax
    (`Cosines.keep`: its dataset's classes and the crossing-dropout draws), so that other datasets'
    classes, which never enter its loss, do not inflate the scale.
    """

    name = "adacos"

    def __init__(self, num_classes: int | None = None, mode: str = "dynamic") -> None:
        super().__init__()
        ok = num_classes is None or (
            isinstance(num_classes, int) and not isinstance(num_classes, bool)
        )
        if not ok or (num_classes is not None and num_classes < 3):
            raise self.error(
                "num_classes", num_classes, "must be an integer >= 3 (set by build_head)"
            )
        if mode not in MODES:
            raise self.error("mode", mode, f"must be one of {', '.join(MODES)}")
        self.num_classes, self.mode = num_classes, mode
        initial = math.nan if num_classes is None else fixed_scale(num_classes)
        self.register_buffer("scale", torch.tensor(initial))

    @property
    def s(self) -> float:  # the current scale, as the other margins' `s`
        return float(self.scale)

    @torch.no_grad()
    def updated_scale(self, c: Cosines) -> Tensor:
        """The dynamic update of the scale from one batch; 0-d tensor in the dtype of `cos`."""
        cos = c.cos.detach()  # [B, C]
        cols = torch.arange(cos.shape[1], device=cos.device)
        others = c.labels[:, None] != cols[None, :]  # [B, C], k != y_i
        if c.keep is not None:  # DAIL: only the classes of the sample's own softmax
            others = others & c.keep
        # Σ_i Σ_{k≠y_i} exp(s·cos θ_ik), shifted by s (cos <= 1: no overflow), summed over
        # every rank's classes
        scale = self.scale.to(cos.dtype)
        shifted = torch.where(others, torch.exp(scale * (cos - 1.0)), torch.zeros_like(cos)).sum()
        total = c.sum_over_classes(shifted)
        if total <= 0:
            return scale
        log_b_avg = scale + torch.log(total) - math.log(cos.shape[0])
        theta_med = safe_acos(c.target_cos.detach()).median()
        return log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4))

    def forward(self, c: Cosines) -> Tensor:
        if self.num_classes is None:
            raise self.error(
                "num_classes", None, "must be set (build_head passes the classifier's)"
            )
        if self.training and self.mode == "dynamic":
            # out of place: no autograd version clash
            self.scale = self.updated_scale(c).to(self.scale.dtype)
        return self.scale.to(c.cos.dtype) * c.cos  # [B, C]
