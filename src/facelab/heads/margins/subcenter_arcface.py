"""Sub-center ArcFace (Deng et al. 2020, "Sub-center ArcFace: boosting face recognition by
large-scale noisy web faces": ArcFace on cos θ_j = max_k cos θ_{j,k}, and the dominant sub-centre
data cleaning)."""

import math

import torch
from torch import Tensor

from facelab.errors import FacelabError
from facelab.heads.margins.arcface import ArcFace


class SubcenterArcFace(ArcFace):
    """ArcFace (same parameters, same target) over K sub-centres per class (METHODS.md table,
    `subcenter_arcface`). The max over sub-centres is the classifier's job: `build_head` gives it
    `sub_centers = 3` unless told otherwise; with K = 1 this is ArcFace exactly.
    """

    name = "subcenter_arcface"
    sub_centers = 3


def _check_filter_inputs(
    weight: Tensor, embeddings: Tensor, labels: Tensor, k: int, max_angle_deg: float
) -> None:
    where = "dominant_subcenter_filter"
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise FacelabError(f"{where}: K={k!r} is invalid: must be an integer >= 1")
    if weight.ndim != 2 or weight.shape[0] % k:
        raise FacelabError(
            f"{where}: weight of shape {tuple(weight.shape)} is not [C*K, d] with K={k}"
        )
    if embeddings.ndim != 2 or embeddings.shape[1] != weight.shape[1]:
        raise FacelabError(
            f"{where}: embeddings of shape {tuple(embeddings.shape)}, "
            f"expected [N, {weight.shape[1]}]"
        )
    num_classes = weight.shape[0] // k
    if labels.shape != embeddings.shape[:1] or labels.dtype != torch.int64:
        raise FacelabError(
            f"{where}: labels must be int64 of shape [{embeddings.shape[0]}], "
            f"got {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise FacelabError(f"{where}: labels must be in [0, {num_classes})")
    ok = isinstance(max_angle_deg, (int, float)) and not isinstance(max_angle_deg, bool)
    if not ok or not 0.0 <= max_angle_deg <= 180.0:
        raise FacelabError(
            f"{where}: max_angle_deg={max_angle_deg!r} is invalid: must be in [0, 180]"
        )


@torch.no_grad()
def dominant_subcenter_filter(
    weight: Tensor,
    embeddings: Tensor,
    labels: Tensor,
    K: int,
    max_angle_deg: float = 75.0,
) -> Tensor:
    """Keep mask [N] (bool) for cleaning a noisy training set with a trained Sub-center ArcFace
    classifier.

    weight [C*K, d]: row c*K + k is sub-centre k of class c (the `Classifier` layout). Per class,
    each of its images goes to its nearest sub-centre (highest cosine, the lowest index on ties);
    the dominant sub-centre is the one with the most images (lowest index on ties); an image is kept
    when its angle to its class's dominant sub-centre is at most `max_angle_deg` (75° in the
    paper). Then retrain with K = 1.
    """
    _check_filter_inputs(weight, embeddings, labels, K, max_angle_deg)
    # [C, K, d]
    w = torch.nn.functional.normalize(weight.double(), dim=1).view(-1, K, weight.shape[1])
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)  # [N, d]
    # [N, K] to the own class's sub-centres
    cos = torch.einsum("nd,nkd->nk", x, w[labels]).clamp(-1.0, 1.0)
    nearest = cos.argmax(dim=1)  # [N]; argmax returns the first maximum
    counts = torch.zeros(w.shape[0], K, dtype=torch.int64)  # [C, K]
    counts.index_put_((labels, nearest), torch.ones_like(labels), accumulate=True)
    dominant = counts.argmax(dim=1)  # [C]
    to_dominant = cos.gather(1, dominant[labels][:, None]).squeeze(1)  # [N]
    return torch.acos(to_dominant) <= math.radians(max_angle_deg)
