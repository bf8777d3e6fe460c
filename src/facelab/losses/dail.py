"""Dataset-invariant learning (DAIL, Wang et al., ICPR 2020, arXiv 2101.05419, Sec. 3.3): an
objective.

A dataset classifier predicts which training set a sample comes from (the dataset id follows from
the global label and the offsets). It sits behind a gradient reversal layer (Ganin & Lempitsky,
ICML 2015): forward identity, backward multiplied by -λ, so that minimising its cross-entropy
trains the classifier to tell the datasets apart and the embedding to make that impossible.

Two stages (config `dail.adversarial_from` = s): before step s the classifier learns on DETACHED
embeddings (no gradient reaches the backbone; the dataset-aware loss trains it alone); from step s
on the gradient goes through the GRL with λ(t) = λ_max · (2 / (1 + exp(-10·p)) - 1),
p = clip((t - s) / warmup, 0, 1) (DANN's ramp; warmup 0: λ_max at once). The trainer calls
`set_step` every step.

Under torchrun the classifier sees the batch gathered from every rank (facelab.distributed.ops): the
same loss and gradients as one process; the classifier, which DDP does not wrap, gets the full
gradient on every rank, so its copies stay identical.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.data.multi import dataset_of
from facelab.distributed.ops import gather_rows, scale_grad, world
from facelab.losses.base import Objective


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """Identity forward; backward gives -lam · the incoming gradient."""
    return _GradReverse.apply(x, float(lam))


def grl_lambda(step: int, lam: float, warmup: int, start: int = 0) -> float:
    """λ at `step`: 0 before `start`, then DANN's ramp 2/(1+e^{-10p})-1 over `warmup` steps, times
    `lam` (Ganin et al. 2016, Sec. 5.2.2); `warmup` 0: `lam` from `start` on, with no ramp (the
    ramp at p = 1 is 0.99991, not 1)."""
    if step < start:
        return 0.0
    if warmup == 0:
        return lam
    p = min(1.0, (step - start) / warmup)
    return lam * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class DatasetInvariance(Objective):
    """embeddings [B, d], global labels [B] -> {"dataset_ce": weight · CE(dataset classifier,
    dataset id)}."""

    def __init__(
        self,
        embedding_size: int,
        offsets: list[int],
        weight: float = 1.0,
        lam: float = 1.0,
        warmup: int = 100,
        adversarial_from: int = 0,
        hidden: int = 0,
    ) -> None:
        super().__init__()
        num = len(offsets) - 1
        layers = [nn.Linear(embedding_size, num)] if hidden == 0 else [
            nn.Linear(embedding_size, hidden), nn.ReLU(), nn.Linear(hidden, num)]
        self.classifier = nn.Sequential(*layers)
        # [D + 1]
        self.register_buffer(
            "offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False
        )
        self.weight, self.lam = weight, lam
        self.warmup, self.adversarial_from = warmup, adversarial_from
        self.step = 0

    def set_step(self, step: int) -> None:
        """The training step, which schedules the two stages and the GRL's λ."""
        self.step = step

    @property
    def adversarial(self) -> bool:
        """Stage 2: the embedding gets the reversed gradient."""
        return self.step >= self.adversarial_from

    def forward(self, embeddings: Tensor, labels: Tensor, **extras: Tensor) -> dict[str, Tensor]:
        if self.adversarial:
            lam = grl_lambda(self.step, self.lam, self.warmup, self.adversarial_from)
            feats = grad_reverse(embeddings, lam)
        else:  # stage 1: the dataset classifier learns, the embedding is left alone
            feats = embeddings.detach()
        if feats.dtype in (torch.float16, torch.bfloat16):
            feats = feats.float()
        size = world()[1]
        # [N·b, d] and [N·b]: the global batch on every rank (facelab.distributed.ops)
        if size > 1:
            feats, labels = scale_grad(gather_rows(feats), 1.0 / size), gather_rows(labels)
        logits = self.classifier(feats)  # [B, D]
        ce = F.cross_entropy(logits, dataset_of(labels, self.offsets))
        return {"dataset_ce": self.weight * ce}
