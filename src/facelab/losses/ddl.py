"""Distribution distillation loss (DDL; Huang et al., "Improving Face Recognition from Hard Samples
via Distribution Distillation Loss", ECCV 2020, arXiv 2002.03662, Sec. 3, Eq. 1-6).

The same network embeds easy samples (the teacher branch, e.g. frontal / high resolution) and hard
ones (student branches, e.g. profile / low resolution) of the same identities in one batch. Per
branch:
  positive similarities  S+ = cos(x_i, x_j) over same-identity pairs i < j inside the branch,
  negative similarities  S- = for each sample of the branch, its hardest (largest) cosine to a
                              sample of another identity in the same branch.
Each set becomes a soft histogram on [0, 1) (Eq. 2-3) with nodes t_r, r < K = 1000,
  h_r = Σ_s exp(-(s - t_r)² / (2σ²)),  σ = 0.1,  P = h / Σ_r h_r.
Loss (Eq. 4-6), summed over student branches s and over the branch pairs
(i, j) ∈ {teacher, students}²:
  λ1·Σ_s KL(P+_T ‖ P+_s) + λ2·Σ_s KL(P-_T ‖ P-_s)
    + λ3·Σ_(i,j) (mean S-_i − mean S+_j),
with λ = (0.1, 0.02, 0.5) as in METHODS.md. The KL terms pull the student distributions onto the
teacher's; the order term keeps every branch's negatives below every branch's positives.

The paper's text and the official code (TFace `torchkit/loss/ddl.py`) differ in five places, each
an option; its default follows the text where the text is explicit, else the code (docs/ddl.md
gives the source of each):
  detach_teacher  False: the KL terms also move the teacher's histograms (TFace); True: the teacher
                  histograms are a fixed target inside the KL terms.
  negatives       "all": hardest negative over every other-identity sample of the branch (paper);
                  "upper": only over the samples after it (j > i), floored at 0, so the branch's
                  last sample counts as 0 (TFace's upper-triangle maximum).
  positive_min    None keeps every positive pair (paper); a float drops pairs with cos <= it
                  (TFace: 0).
  bin_nodes       "left": t_r = r/K (TFace); "mid": t_r = (r + 0.5)/K.
  kl_form         "floor": Σ p (log(p + 1e-10) − log(q + 1e-10)), the paper's Σ P log(P/Q) with
                  the logarithm guarded; "smooth": the KL of p + 1e-9 and q + 1e-9 (TFace's
                  kl_div on smoothed histograms).

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

EPS = 1e-10  # floor inside the KL logarithms ("floor"): far histogram tails underflow to 0
SMOOTH_EPS = 1e-9  # added to both histograms by kl_form "smooth" (TFace)
NEGATIVES = ("all", "upper")
BIN_NODES = ("left", "mid")
KL_FORMS = ("floor", "smooth")


def histogram_nodes(
    bins: int,
    nodes: str = "left",
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> torch.Tensor:
    """[K] node positions t_r on [0, 1): r/K ("left") or (r + 0.5)/K ("mid")."""
    r = torch.arange(bins, dtype=dtype, device=device)  # [K]
    return (r + 0.5) / bins if nodes == "mid" else r / bins


def soft_histogram(
    sims: torch.Tensor, bins: int = 1000, sigma: float = 0.1, nodes: str = "left"
) -> torch.Tensor:
    """[N] similarities -> [bins] normalised Gaussian-kernel histogram on [0, 1) (Eq. 2-3)."""
    t = histogram_nodes(bins, nodes, sims.dtype, sims.device)  # [K]
    h = torch.exp(-((sims[:, None] - t[None, :]) ** 2) / (2 * sigma**2)).sum(0)  # [K]
    return h / h.sum().clamp_min(torch.finfo(h.dtype).tiny)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, form: str = "floor") -> torch.Tensor:
    """KL(p ‖ q) of two [K] distributions (Eq. 4). "floor": Σ_k p_k (log(p_k + ε) − log(q_k + ε)),
    ε = 1e-10 only guards log 0; "smooth": Σ_k p̃_k (log p̃_k − log q̃_k) with p̃ = p + 1e-9,
    q̃ = q + 1e-9 (TFace), which also weights the bins where p is 0."""
    if form == "smooth":
        p, q = p + SMOOTH_EPS, q + SMOOTH_EPS
        return (p * (torch.log(p) - torch.log(q))).sum()
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum()


def branch_similarities(
    emb: torch.Tensor,
    labels: torch.Tensor,
    negatives: str = "all",
    positive_min: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S+ [P], S- [M]) of one branch. emb: [n, d], labels: [n], in batch order.
    S+: cosines of same-label pairs i < j, without those <= positive_min when it is set.
    S- ("all"): each sample's largest cosine to a sample of another label; samples without any
    such sample are left out. S- ("upper"): for every sample i, max(0, largest cosine to a sample
    j > i of another label), so the last sample gives 0; empty when the branch has one label."""
    x = nn.functional.normalize(emb, dim=1)
    cos = x @ x.t()  # [n, n]
    same = labels[:, None] == labels[None, :]  # [n, n]
    upper = torch.ones_like(same).triu(1)  # [n, n] j > i
    pos = cos[same & upper]  # [P]
    if positive_min is not None:  # a positive pair this dissimilar is taken for label noise
        pos = pos[pos > positive_min]
    if negatives == "upper":
        other = ~same & upper  # [n, n]
        # the masked entries are 0 and every row holds one (its diagonal): the floor at 0
        neg = cos.masked_fill(~other, 0.0).amax(1) if (~same).any() else cos.new_zeros(0)  # [n]
        return pos, neg
    has_neg = (~same).any(1)  # [n]
    neg = cos.masked_fill(same, float("-inf")).amax(1)[has_neg]  # [M]
    return pos, neg


def _check_options(negatives: str, positive_min: float | None, bin_nodes: str,
                   kl_form: str) -> None:
    for name, value, choices in (("negatives", negatives, NEGATIVES),
                                 ("bin_nodes", bin_nodes, BIN_NODES),
                                 ("kl_form", kl_form, KL_FORMS)):
        if value not in choices:
            raise FacelabError(f"DDL: {name} must be one of {', '.join(choices)}, got {value!r}")
    if positive_min is not None and not -1.0 <= positive_min < 1.0:
        raise FacelabError(f"DDL: positive_min must be None or in [-1, 1), got {positive_min!r}")


class DDLLoss(Objective):
    """objective(embeddings [B, d], labels [B], ddl_group=[B] int64) -> {"ddl_kl_pos", "ddl_kl_neg",
    "ddl_order"}, each already weighted. detach_teacher: stop the gradient through the teacher's
    histograms in the KL terms (the order term always gets gradients from every branch).
    negatives, positive_min, bin_nodes, kl_form: see the module docstring."""

    def __init__(
        self,
        kl_pos: float = 0.1,
        kl_neg: float = 0.02,
        order: float = 0.5,
        bins: int = 1000,
        sigma: float = 0.1,
        detach_teacher: bool = False,
        negatives: str = "all",
        positive_min: float | None = None,
        bin_nodes: str = "left",
        kl_form: str = "floor",
    ) -> None:
        super().__init__()
        if bins < 1 or not sigma > 0:
            raise FacelabError(
                f"DDL: needs bins >= 1 and sigma > 0, got bins={bins}, sigma={sigma}"
            )
        _check_options(negatives, positive_min, bin_nodes, kl_form)
        self.weights = {"ddl_kl_pos": kl_pos, "ddl_kl_neg": kl_neg, "ddl_order": order}
        self.bins, self.sigma, self.detach_teacher = bins, sigma, detach_teacher
        self.negatives, self.positive_min = negatives, positive_min
        self.bin_nodes, self.kl_form = bin_nodes, kl_form

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
            g: branch_similarities(embeddings[ddl_group == g], labels[ddl_group == g],
                                   self.negatives, self.positive_min)
            for g in groups
        }
        terms = {"ddl_kl_pos": zero, "ddl_kl_neg": zero, "ddl_order": zero}
        for g in [g for g in groups if g > 0] if 0 in sims else []:  # student branches
            for key, k in (("ddl_kl_pos", 0), ("ddl_kl_neg", 1)):
                teacher, student = sims[0][k], sims[g][k]
                if len(teacher) and len(student):
                    p = self._hist(teacher.detach() if self.detach_teacher else teacher)
                    kl = kl_divergence(p, self._hist(student), self.kl_form)
                    terms[key] = terms[key] + kl
        pos_means = [s[0].mean() for s in sims.values() if len(s[0])]
        neg_means = [s[1].mean() for s in sims.values() if len(s[1])]
        for neg in neg_means:  # Σ over branch pairs (i, j) of mean S-_i − mean S+_j
            for pos in pos_means:
                terms["ddl_order"] = terms["ddl_order"] + neg - pos
        weighted = {k: self.weights[k] * v for k, v in terms.items()}
        return {k: replicated_loss(v) for k, v in weighted.items()} if gathered else weighted

    def _hist(self, sims: torch.Tensor) -> torch.Tensor:
        return soft_histogram(sims, self.bins, self.sigma, self.bin_nodes)
