"""The classifier: embeddings -> `Cosines` to this rank's class centres.

One module holds every per-class parameter, so that sharding and sampling apply to all of them:
- centres W [C_local·K, d] of this rank's classes (facelab.heads.shards), K sub-centres per class
  (Sub-center ArcFace, Deng et al. ECCV 2020: cos θ_j = max_k cos θ_{j,k});
- opt-in learnable per-class margins (AdaM-Softmax, AdaptiveFace, Liu et al. CVPR 2019), handed to
  the margin in `Cosines.class_margins`;
- opt-in column selection in training mode: Hard Prototype Mining (facelab.heads.prototypes) or
  Partial FC sampling (facelab.heads.partial_fc); `Cosines` then has one column per selected class
  (sorted by class id, ids in `Cosines.columns`), labels and per-class margins remapped alike.
  Eval mode uses every class.
`seed`: centres and margins drawn per block of classes (facelab.heads.init), the same for a class at
any world size; None: torch's global RNG.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.errors import FacelabError
from facelab.heads.cosines import Cosines
from facelab.heads.init import seeded_normal, seeded_uniform
from facelab.heads.normalized_linear import normalized_linear
from facelab.heads.partial_fc import check_sample_rate, sample_columns
from facelab.heads.prototypes import mined_classes
from facelab.heads.shards import class_range, local_labels, target_cos


def _positive_int(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FacelabError(f"classifier: {field}={value!r} is invalid: must be an integer >= 1")
    return value


def _margin_init(value: object) -> tuple[float, float] | None:
    """None, or (low, high) with 0 <= low <= high finite: the uniform init range of the per-class
    margins."""
    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not 0.0 <= value[0] <= value[1] < float("inf"):
        rule = "must be None or (low, high) with 0 <= low <= high"
        raise FacelabError(f"classifier: class_margins={value!r} is invalid: {rule}")
    return float(value[0]), float(value[1])


class Classifier(nn.Module):
    """Class centres W [C_local·K, d] (init N(0, 0.01)) and optional bias; forward gives `Cosines`.

    class_margins=(low, high): also a learnable margin per local class, `class_margins` [C_local]
    init U(low, high), 1-D so that the trainer applies no weight decay to it (AdaM-Softmax). Default
    None.

    normalize=True: cos θ_j = <x/|x|, W_j/|W_j|> clamped to [-1, 1], max over the K sub-centres.
    normalize=False (the plain softmax baseline): raw logits W·x + b in `Cosines.cos`.
    Computes in float32 (or wider) even under autocast.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        normalize: bool = True,
        bias: bool = False,
        sub_centers: int = 1,
        rank: int = 0,
        world_size: int = 1,
        class_margins: tuple[float, float] | None = None,
        hard_prototypes: int = 0,
        sample_rate: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_size = _positive_int("embedding_size", embedding_size)
        self.num_classes = _positive_int("num_classes", num_classes)
        self.sub_centers = _positive_int("sub_centers", sub_centers)
        self.world_size = _positive_int("world_size", world_size)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise FacelabError(
                f"classifier: rank={rank!r} is invalid: must be in [0, {world_size})"
            )
        if num_classes < world_size:
            raise FacelabError(
                f"classifier: num_classes={num_classes} is smaller than world_size={world_size}"
            )
        if bias and normalize:
            raise FacelabError(
                "classifier: bias=True needs normalize=False (a bias has no place in a cosine)"
            )
        if sub_centers > 1 and not normalize:
            raise FacelabError(f"classifier: sub_centers={sub_centers} needs normalize=True")
        self.normalize, self.rank = normalize, rank
        self.start, self.end = class_range(num_classes, rank, world_size)
        self.num_local = self.end - self.start
        self.seed, self.sample_rate = seed, check_sample_rate(sample_rate)
        if seed is None:  # torch's global RNG: the init depends on the rank's share
            weight = torch.empty(self.num_local * sub_centers, embedding_size).normal_(0.0, 0.01)
        else:  # the same centres for a class whatever the world size (resharding, equivalence)
            weight = seeded_normal(seed, self.start, self.end, sub_centers, embedding_size, 0.01)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(self.num_local)) if bias else None
        init = _margin_init(class_margins)
        if init is not None and not normalize:
            raise FacelabError("classifier: class_margins needs normalize=True")
        self.margin_init = init
        if init is None:
            self.class_margins = None
        elif seed is None:
            self.class_margins = nn.Parameter(torch.empty(self.num_local).uniform_(*init))
        else:
            self.class_margins = nn.Parameter(seeded_uniform(seed, self.start, self.end, *init))
        # Partial FC: the step number seeds each step's class sample (resumable)
        if self.sample_rate < 1.0:
            self.register_buffer("sample_step", torch.zeros((), dtype=torch.int64))
        # sample_step as a Python int (reading the buffer on a GPU is a sync)
        self._step: int | None = None
        if (
            not isinstance(hard_prototypes, int)
            or isinstance(hard_prototypes, bool)
            or hard_prototypes < 0
        ):
            raise FacelabError(f"classifier: hard_prototypes={hard_prototypes!r} is invalid: "
                               "must be an integer >= 0")
        if hard_prototypes and not normalize:
            raise FacelabError(
                "classifier: hard_prototypes needs normalize=True (cosine prototypes)"
            )
        if hard_prototypes and (world_size != 1 or self.sample_rate < 1.0):
            raise FacelabError(
                "classifier: hard_prototypes is implemented at world size 1 without "
                f"Partial FC (world_size={world_size}, sample_rate={self.sample_rate})"
            )
        self.hard_prototypes = hard_prototypes

    @torch.no_grad()
    def clamp_margins_(self, low: float, high: float) -> None:
        """Projects the stored per-class margins onto [low, high], in place: called after an
        optimiser step (projected gradient descent), never inside a forward."""
        if self.class_margins is not None:
            self.class_margins.clamp_(low, high)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, "
            f"classes=[{self.start}, {self.end}) of {self.num_classes}, "
            f"normalize={self.normalize}, bias={self.bias is not None}, "
            f"sub_centers={self.sub_centers}, "
            f"rank={self.rank}, world_size={self.world_size}, class_margins={self.margin_init}, "
            f"hard_prototypes={self.hard_prototypes}, sample_rate={self.sample_rate}"
        )

    def check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise FacelabError(
                f"classifier: embeddings of shape {tuple(embeddings.shape)}, "
                f"expected [B, {self.embedding_size}]"
            )
        if labels.dtype != torch.int64 or labels.shape != embeddings.shape[:1]:
            raise FacelabError(
                f"classifier: labels of shape {tuple(labels.shape)} and dtype {labels.dtype}, "
                f"expected [{embeddings.shape[0]}] int64"
            )
        if not labels.numel():
            return
        # an exact check would sync the device every step: assert on the device
        if labels.device.type != "cpu":
            inside = ((labels >= 0) & (labels < self.num_classes)).all()
            torch._assert_async(inside, f"classifier: labels must be in [0, {self.num_classes})")
            return
        low, high = torch.aminmax(labels)
        if low < 0 or high >= self.num_classes:
            raise FacelabError(
                f"classifier: labels must be in [0, {self.num_classes}), "
                f"got [{int(low)}, {int(high)}]"
            )

    def cosines(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        """cos [B, C_local] (or raw logits when normalize=False) of float embeddings x [B, d];
        with `classes` [U] (local class indices), only those columns: [B, U]."""
        weight = self.weight.to(x.dtype)
        if not self.normalize:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            if classes is not None:  # Partial FC on raw logits (one centre per class)
                weight = weight.index_select(0, classes)
                bias = None if bias is None else bias.index_select(0, classes)
            return F.linear(x, weight, bias)
        num = self.num_local
        if classes is not None:  # index_select: its backward is an index_add, no host sync on a GPU
            # [U·K, d]
            weight = weight.view(num, -1).index_select(0, classes).view(-1, self.embedding_size)
            num = len(classes)
        # [B, num*K], no normalised W copy
        cos = normalized_linear(F.normalize(x, dim=1), weight).clamp(-1.0, 1.0)
        if self.sub_centers > 1:
            cos = cos.view(x.shape[0], num, self.sub_centers).max(dim=2).values  # [B, num]
        return cos

    def forward(self, embeddings: Tensor, labels: Tensor) -> Cosines:
        """Cosines of embeddings [B, d] (the whole batch of every rank when sharded), labels [B]."""
        self.check_inputs(embeddings, labels)
        dtype = torch.promote_types(embeddings.dtype, self.weight.dtype)
        dtype = torch.promote_types(dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(dtype)  # [B, d]
            local = local_labels(labels, self.start, self.end)  # [B]
            # [C_local]
            margins = None if self.class_margins is None else self.class_margins.to(dtype)
            columns = self.selected_columns(labels, local)  # [U] local ids, or None: every class
            if columns is None:
                cos = self.cosines(x)  # [B, C_local]
            else:  # every local label is among the columns
                cos = self.cosines(x, columns)  # [B, U]
                inside = torch.searchsorted(columns, local.clamp(min=0))  # [B] column of each label
                local = torch.where(local >= 0, inside, local)
                margins = None if margins is None else margins[columns]  # [U]
                columns = columns + self.start  # class ids of the columns
            cos_y = target_cos(cos, local, self.world_size)
            return Cosines(cos, local, cos_y, x.norm(dim=1), margins, self.world_size, columns)

    def selected_columns(self, labels: Tensor, local: Tensor) -> Tensor | None:
        """Training mode: the sorted local ids [U] that enter this step's softmax (Hard Prototype
        Mining, Partial FC); None when every class does."""
        if not self.training:
            return None
        if self.hard_prototypes:
            centres = self.weight.view(self.num_local, self.sub_centers, -1)  # [C, K, d]
            return mined_classes(centres, labels, self.hard_prototypes)
        if self.sample_rate < 1.0:
            return self.sampled_classes(local)
        return None

    def sampled_classes(self, local: Tensor) -> Tensor:
        """Partial FC: sorted local ids [U] of this step's positives plus random negatives (see
        partial_fc). The step number is read from the `sample_step` buffer once (after building or
        loading a state) and counted on the host from then on; the buffer is advanced on its device
        for the checkpoint."""
        step = int(self.sample_step) if self._step is None else self._step
        self._step = step + 1
        self.sample_step.add_(1)
        seed = 0 if self.seed is None else self.seed
        return sample_columns(local, self.num_local, self.sample_rate, (seed, step, self.rank))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._step = None  # a loaded sample_step: read it again at the next draw
