"""Hard Prototype Mining (AdaptiveFace, Liu et al. CVPR 2019, Sec. 3.2).

In training mode the softmax runs over the batch's classes plus the k nearest prototypes of each
(by centre cosine, the max over sub-centre pairs, computed without gradient from the current centres
every step) instead of over all classes. Implemented at world size 1 without Partial FC (the
classifier refuses other settings).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def hard_prototypes(centres: Tensor, classes: Tensor, k: int) -> Tensor:
    """The k nearest other classes [U, k'] (k' = min(k, C - 1)) of each class in `classes` [U], by
    the cosine of their centres `centres` [C, K, d] (K sub-centres: the max over sub-centre
    pairs)."""
    with torch.no_grad():
        num, sub, _ = centres.shape
        unit = F.normalize(centres.reshape(num * sub, -1), dim=1)  # [C·K, d]
        mine = unit.view(num, sub, -1)[classes].reshape(len(classes) * sub, -1)  # [U·K, d]
        sim = (mine @ unit.T).view(len(classes), sub, num, sub).amax(dim=(1, 3))  # [U, C]
        sim[torch.arange(len(classes), device=sim.device), classes] = -float("inf")  # not itself
        return sim.topk(min(k, num - 1), dim=1).indices  # [U, k']


def mined_classes(centres: Tensor, labels: Tensor, k: int) -> Tensor:
    """Sorted class ids [U] of the batch's classes (labels [B]) and of their k nearest
    prototypes."""
    batch = labels.unique()  # [U0]
    near = hard_prototypes(centres.detach(), batch, k)  # [U0, k]
    return torch.cat([batch, near.flatten()]).unique()  # [U], sorted
