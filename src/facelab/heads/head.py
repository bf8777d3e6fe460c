"""FaceHead: classifier -> margin -> cross-entropy (+ the margin's regulariser), as a loss dict."""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from facelab.distributed.ops import replicated_loss
from facelab.errors import FacelabError
from facelab.heads.classifier import Classifier
from facelab.heads.cross_entropy import correct, cross_entropy
from facelab.heads.dataset_mask import MASKED, DatasetMask
from facelab.heads.margins import MARGINS, build_margin, margin_parameters
from facelab.heads.margins.base import Margin


class HeadOutput(NamedTuple):
    """One head forward: the loss dict and the logits that entered the cross-entropy."""

    losses: dict[str, Tensor]  # "loss" (total), "ce", and "reg" when the margin has a regulariser
    logits: Tensor  # [B, U] this rank's columns, float32 or wider
    columns: Tensor  # [U] class id of each logit column


class FaceHead(nn.Module):
    """Ties a `Classifier` and a `Margin`, optionally with DAIL's dataset-aware softmax
    (facelab.heads.dataset_mask). Logits and cross-entropy are computed in float32 or wider even
    under autocast. With a class-sharded classifier the caller hands in the whole batch gathered
    from every rank (facelab.distributed.ops.gather_rows); the loss is then the sharded
    cross-entropy, with the gradient convention of facelab.distributed.ops."""

    def __init__(
        self, classifier: Classifier, margin: Margin, dataset_mask: DatasetMask | None = None
    ) -> None:
        super().__init__()
        if margin.normalized != classifier.normalize:
            raise FacelabError(
                f"head: margin '{margin.name}' needs a classifier with "
                f"normalize={margin.normalized}, got normalize={classifier.normalize}")
        if margin.class_margin_init is not None and classifier.class_margins is None:
            raise FacelabError(
                f"head: margin '{margin.name}' needs a classifier with per-class margins "
                "(class_margins=(low, high))")
        self.classifier, self.margin, self.dataset_mask = classifier, margin, dataset_mask

    @property
    def sharded(self) -> bool:
        """The classes are split over ranks: the caller gathers the batch."""
        return self.classifier.world_size != 1

    def set_step(self, step: int) -> None:
        """The training step, which keys the crossing-dropout draw of the dataset mask."""
        if self.dataset_mask is not None:
            self.dataset_mask.set_step(step)

    def after_step(self) -> None:
        """After each optimiser step: keeps the margin's stored per-class margins in its bounds
        (AdaM-Softmax)."""
        bounds = self.margin.class_margin_bounds
        if bounds is not None:
            self.classifier.clamp_margins_(*bounds)

    def forward_with_logits(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        """embeddings [B, d] and global labels [B] -> HeadOutput."""
        c = self.classifier(embeddings, labels)
        clf = self.classifier
        columns = c.columns
        if columns is None:
            columns = torch.arange(clf.start, clf.end, device=clf.weight.device)  # [C_local]
        keep = None
        if self.dataset_mask is not None:  # DAIL: other datasets' columns leave the softmax
            keep = self.dataset_mask.keep(labels, columns.to(labels.device))  # [B, U]
            c = c._replace(keep=keep)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.margin(c)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [B, U]
            if keep is not None:
                logits = logits.masked_fill(~keep, MASKED)
            ce = cross_entropy(logits, c.labels, clf.world_size)
            losses = {"loss": ce, "ce": ce}
            reg = self.margin.regularizer(c)
            if reg is not None:
                losses["reg"] = reg
                losses["loss"] = ce + reg
            if self.sharded:  # every rank holds the global loss: back-propagate 1/N of it
                losses["loss"] = replicated_loss(losses["loss"])
        return HeadOutput(losses, logits, columns)

    def forward(self, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The loss dict of `forward_with_logits`."""
        return self.forward_with_logits(embeddings, labels).losses

    def correct(self, out: HeadOutput, labels: Tensor) -> Tensor:
        """[B] bool: the highest training logit (over every rank) is the label's."""
        return correct(out.logits, labels, out.columns, self.classifier.world_size)


def build_head(
    margin: str,
    embedding_size: int,
    num_classes: int,
    sub_centers: int | None = None,
    classifier_kwargs: dict | None = None,
    dataset_mask: DatasetMask | None = None,
    **margin_kwargs: object,
) -> FaceHead:
    """A FaceHead with `build_margin(margin, **margin_kwargs)` and the classifier that margin needs
    (cosines without bias, or raw logits W·x + b for the plain `softmax`; per-class margins for
    AdaM), with `sub_centers` per class (None: the margin's default, 3 for `subcenter_arcface`, else
    1). A margin that takes `num_classes` (AdaCos) gets the classifier's (the keyword is this
    function's). `classifier_kwargs`: more Classifier arguments (rank, world_size, sample_rate,
    seed, hard_prototypes). `dataset_mask`: DAIL's dataset-aware softmax, or None."""
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
    return FaceHead(classifier, m, dataset_mask)
