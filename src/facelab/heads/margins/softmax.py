"""Plain softmax baseline: logits W·x + b from a linear classifier, no normalisation, no margin."""

from torch import Tensor

from facelab.heads.cosines import Cosines
from facelab.heads.margins.base import Margin


class Softmax(Margin):
    """Softmax cross-entropy on raw logits `W_y·x + b` (METHODS.md table, `softmax`).

    `normalized = False`: the classifier hands over raw logits in `Cosines.cos`; they pass through.
    """

    name = "softmax"
    normalized = False

    def __init__(self) -> None:
        super().__init__()

    def forward(self, c: Cosines) -> Tensor:
        return c.cos  # [B, C]
