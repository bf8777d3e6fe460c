"""Distribution distillation loss (DDL; Huang et al., "Improving Face Recognition from Hard Samples
via Distribution Distillation Loss", ECCV 2020, arXiv 2002.03662, Sec. 3, Eq. 1-6).

The same network embeds easy samples (the teacher branch, e.g. frontal / high resolution) and hard
ones (student branches, e.g. profile / low resolution) of the same identities in one batch. Per
branch:
  positive similarities  S+ = cos(x_i, x_j) over same-identity pairs i < j inside the branch,
  negative similarities  S- = for each sample of the branch, its hardest (largest) cosine to a
                              sample of another identity in the same branch.
Each set becomes a soft histogram on [0, 1) (Eq. 2-3): bins t_k = (k + 0.5) / K, k < K = 1000,
  h_k = Σ_s exp(-(s - t_k)² / (2σ²)),  σ = 0.1,  P = h / Σ_k h_k.
Loss (Eq. 4-6), summed over student branches s and over the branch pairs
(i, j) ∈ {teacher, students}²:
  λ1·Σ_s KL(P+_T ‖ P+_s) + λ2·Σ_s KL(P-_T ‖ P-_s)
    + λ3·Σ_(i,j) (mean S-_i − mean S+_j),
with λ = (0.1, 0.02, 0.5) as in METHODS.md. The KL terms pull the student distributions onto the
teacher's; the order term keeps every branch's negatives below every branch's positives.

Samples are assigned by an int64 group per sample: 0 teacher, k >= 1 student branch k, -1 not used
by DDL (the classification loss still sees them). A branch without positives (or negatives) in a
batch adds nothing to the terms that need them.

Under torchrun the loss is computed on the batch gathered from every rank (facelab.distributed.ops),
so the histograms, hardest negatives and loss equal those of one process with the whole batch.
"""

import torch
from torch import nn

from facelab.distributed.ops import gather_rows, replicated_loss, world
from facelab.errors import FacelabError
from facelab.losses.base import Objective

EPS = 1e-10  # floor inside the KL logarithms: far histogram tails underflow to 0


def soft_histogram(sims: torch.Tensor, bins: int = 1000, sigma: float = 0.1) -> torch.Tensor:
    """[N] similarities -> [bins] normalised Gaussian-kernel histogram on [0, 1) (Eq. 2-3)."""
    centres = (torch.arange(bins, dtype=sims.dtype, device=sims.device) + 0.5) / bins  # [K]
    h = torch.exp(-((sims[:, None] - centres[None, :]) ** 2) / (2 * sigma**2)).sum(0)  # [K]
    return h / h.sum().clamp_min(torch.finfo(h.dtype).tiny)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_k p_k (log p_k − log q_k) of two [K] distributions."""
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum()


def branch_similarities(
    emb: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S+ [P], S- [M]) of one branch: cosines of same-label pairs i < j, and each sample's largest
    cosine to a sample of another label (samples without any such sample are left out).
    emb: [n, d]."""
    x = nn.functional.normalize(emb, dim=1)
    cos = x @ x.t()  # [n, n]
    same = labels[:, None] == labels[None, :]  # [n, n]
    upper = torch.ones_like(same).triu(1)
    pos = cos[same & upper]  # [P]
    has_neg = (~same).any(1)  # [n]
    neg = cos.masked_fill(same, float("-inf")).amax(1)[has_neg]  # [M]
    return pos, neg


class DDLLoss(Objective):
    """objective(embeddings [B, d], labels [B], ddl_group=[B] int64) -> {"ddl_kl_pos", "ddl_kl_neg",
    "ddl_order"}, each already weighted. detach_teacher: stop the gradient through the teacher's
    histograms in the KL terms (the teacher is the target the students move to; the order term
    always gets gradients from every branch)."""

    def __init__(
        self,
        kl_pos: float = 0.1,
        kl_neg: float = 0.02,
        order: float = 0.5,
        bins: int = 1000,
        sigma: float = 0.1,
        detach_teacher: bool = True,
    ) -> None:
        super().__init__()
        if bins < 1 or not sigma > 0:
            raise FacelabError(
                f"DDL: needs bins >= 1 and sigma > 0, got bins={bins}, sigma={sigma}"
            )
        self.weights = {"ddl_kl_pos": kl_pos, "ddl_kl_neg": kl_neg, "ddl_order": order}
        self.bins, self.sigma, self.detach_teacher = bins, sigma, detach_teacher

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ddl_group: torch.Tensor | None = None,
        **_: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if ddl_group is None:
            raise FacelabError(
                "DDL: the batch carries no 'ddl_group' extras (use distill.name: ddl's sampler)"
            )
        # autocast: 1000-bin histograms need float32
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        gathered = world()[1] > 1
        if gathered:  # the global batch on every rank (rank order), as one process would see it
            embeddings, labels, ddl_group = (
                gather_rows(t) for t in (embeddings, labels, ddl_group)
            )
        # keeps the graph (and dtype) when a term has nothing to measure
        zero = embeddings.sum() * 0.0
        groups = [int(g) for g in torch.unique(ddl_group[ddl_group >= 0]).tolist()]
        sims = {
            g: branch_similarities(embeddings[ddl_group == g], labels[ddl_group == g])
            for g in groups
        }
        terms = {"ddl_kl_pos": zero, "ddl_kl_neg": zero, "ddl_order": zero}
        for g in [g for g in groups if g > 0] if 0 in sims else []:  # student branches
            for key, k in (("ddl_kl_pos", 0), ("ddl_kl_neg", 1)):
                teacher, student = sims[0][k], sims[g][k]
                if len(teacher) and len(student):
                    p = self._hist(teacher.detach() if self.detach_teacher else teacher)
                    terms[key] = terms[key] + kl_divergence(p, self._hist(student))
        pos_means = [s[0].mean() for s in sims.values() if len(s[0])]
        neg_means = [s[1].mean() for s in sims.values() if len(s[1])]
        for neg in neg_means:  # Σ over branch pairs (i, j) of mean S-_i − mean S+_j
            for pos in pos_means:
                terms["ddl_order"] = terms["ddl_order"] + neg - pos
        weighted = {k: self.weights[k] * v for k, v in terms.items()}
        return {k: replicated_loss(v) for k, v in weighted.items()} if gathered else weighted

    def _hist(self, sims: torch.Tensor) -> torch.Tensor:
        return soft_histogram(sims, self.bins, self.sigma)
