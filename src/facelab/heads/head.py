"""FaceHead: classifier -> margin -> cross-entropy (+ the margin's regulariser), as a loss dict."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.errors import FacelabError
from facelab.heads.classifier import Classifier
from facelab.heads.dataset_mask import DatasetMask, logit_columns
from facelab.heads.margins import MARGINS, build_margin, margin_parameters
from facelab.heads.margins.base import Margin


class FaceHead(nn.Module):
    """Ties a `Classifier` and a `Margin`; `forward(embeddings [B, d], labels [B])` returns
    {"loss": total, "ce": cross-entropy, "reg": regulariser (only when the margin has one)}.
    Logits and cross-entropy are computed in float32 even under autocast.
    """

    def __init__(self, classifier: Classifier, margin: Margin) -> None:
        super().__init__()
        if margin.normalized != classifier.normalize:
            raise FacelabError(
                f"head: margin '{margin.name}' needs a classifier with normalize={margin.normalized}, "
                f"got normalize={classifier.normalize}"
            )
        if margin.class_margin_init is not None and classifier.class_margins is None:
            raise FacelabError(
                f"head: margin '{margin.name}' needs a classifier with per-class margins (class_margins=(low, high))"
            )
        self.classifier, self.margin = classifier, margin
        self.dataset_mask: DatasetMask | None = None  # DAIL dataset-aware softmax (set by FaceTask); None: off

    def forward_with_logits(self, embeddings: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The loss dict and the logits [B, C_local] that entered the cross-entropy (for accuracy logging)."""
        if self.classifier.world_size != 1:  # gathered batch, sharded cross-entropy
            from facelab.distributed.loss import sharded_forward

            return sharded_forward(self, embeddings, labels)
        c = self.classifier(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.margin(c)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [B, C_local], >= float32
            if self.dataset_mask is not None:  # DAIL: other datasets' columns leave each sample's softmax
                logits = self.dataset_mask(logits, labels, logit_columns(self.classifier))
            ce = F.cross_entropy(logits, c.labels)
            losses = {"loss": ce, "ce": ce}
            reg = self.margin.regularizer(c)
            if reg is not None:
                losses["reg"] = reg
                losses["loss"] = ce + reg
        return losses, logits

    def forward(self, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self.forward_with_logits(embeddings, labels)[0]


def build_head(
    margin: str,
    embedding_size: int,
    num_classes: int,
    sub_centers: int | None = None,
    classifier_kwargs: dict | None = None,
    **margin_kwargs: object,
) -> FaceHead:
    """A FaceHead with `build_margin(margin, **margin_kwargs)` and the classifier that margin needs
    (cosines without bias, or raw logits W·x + b for the plain `softmax`; per-class margins for AdaM),
    with `sub_centers` per class (None: the margin's default, 3 for `subcenter_arcface`, else 1).
    A margin that takes `num_classes` (AdaCos) gets the classifier's (the keyword is this function's own).
    `classifier_kwargs`: more Classifier arguments (rank, world_size, sample_rate, seed)."""
    if margin in MARGINS and "num_classes" in margin_parameters(margin):
        margin_kwargs["num_classes"] = num_classes
    m = build_margin(margin, **margin_kwargs)
    classifier = Classifier(
        embedding_size,
        num_classes,
        normalize=m.normalized,
        bias=not m.normalized,
        sub_centers=m.sub_centers if sub_centers is None else sub_centers,
        class_margins=m.class_margin_init,
        **(classifier_kwargs or {}),
    )
    return FaceHead(classifier, m)
