"""AdaM-Softmax (Liu et al. 2019, "AdaptiveFace: adaptive margin and sampling for face
recognition", L_ad + L_m)."""

import torch
from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin, replace_target


class AdaMSoftmax(Margin):
    """Adaptive margin softmax: target logit `s·(cos θ_y - m_y)` with a learnable margin per class
    (METHODS.md table, `adam_softmax`), plus the loss `λ·(1 - mean_c m_c)` that keeps margins from
    shrinking to zero.

    The margins are per-class state, so they live in the classifier (sharded and sampled with the
    class centres, init U(0.3, 0.4), 1-D so without weight decay) and arrive as
    `Cosines.class_margins` [C_local]; `build_head` asks the classifier for them through
    `class_margin_init`. Both the target and the regulariser use the stored margins as they are;
    `FaceHead.after_step` clamps the stored values to [0, 1] after every optimiser step
    (`class_margin_bounds`, as FaceX-Zoo clamps its stored margins). A clamp inside the forward
    instead would give a margin past a bound zero gradient from both terms: it could never come
    back. The mean runs over the classes of this step's
    softmax on every rank (`Cosines.sum_over_classes`): all classes, unless Partial FC samples them.
    The paper's other two parts are options outside this margin: Hard Prototype Mining (Sec. 3.2) is
    the classifier's `hard_prototypes=k` (facelab.heads.classifier, config `head.hard_prototypes`),
    Adaptive Data Sampling (Sec. 3.3) is `AdaptiveBatchSampler` (facelab.data.samplers, config
    `data.adaptive_sampling`); recipes `heads/adam_softmax_hpm`, `heads/adaptiveface`.
    """

    name = "adam_softmax"
    class_margin_init = (0.3, 0.4)
    class_margin_bounds = (0.0, 1.0)

    def __init__(self, s: float = 32.0, lam: float = 70.0) -> None:
        super().__init__()
        self.s = self.real("s", s, 0.0, open_low=True)
        self.lam = self.real("lam", lam, 0.0)

    def margins(self, c: Cosines) -> Tensor:
        """Per-class margins [C_local], as stored (kept in [0, 1] after each step)."""
        m = c.class_margins
        if m is None or m.shape != c.cos.shape[1:]:
            got = None if m is None else tuple(m.shape)
            raise self.error(
                "class_margins", got, f"needs per-class margins of shape [{c.cos.shape[1]}]"
            )
        return m

    def forward(self, c: Cosines) -> Tensor:
        # [B]; rows with label -1 are not replaced
        m_y = self.margins(c).gather(0, c.labels.clamp(min=0))
        return self.s * replace_target(c.cos, c.labels, c.target_cos - m_y)  # [B, C]

    def regularizer(self, c: Cosines) -> Tensor:
        m = self.margins(c)  # [C_local]
        total = c.sum_over_classes(m.sum())
        count = c.sum_over_classes(torch.tensor(float(m.numel()), dtype=m.dtype, device=m.device))
        return self.lam * (1.0 - total / count)
