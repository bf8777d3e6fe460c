"""The one classifier: embeddings -> `Cosines` to this rank's class centres (sharded by class, K sub-centres).

Classes are split over `world_size` ranks in contiguous ranges; this rank holds [start, end). Labels
are mapped to local columns (-1 where the target lives on another rank) and cos θ_y is shared by
`target_cos`, a sum over ranks: the identity at world size 1, a differentiable all-reduce
(facelab.distributed.ops) in a sharded run, whose forward receives the gathered global batch.
Sub-centres (Sub-center ArcFace, Deng et al. 2020): K centres per class, cos θ_j = max_k cos θ_{j,k}.
Per-class margins (AdaM-Softmax, AdaptiveFace, Liu et al. 2019), opt-in: one learnable margin per class,
sharded like the centres, handed to the margin in `Cosines.class_margins`.

Hard Prototype Mining (AdaptiveFace, Liu et al. 2019, Sec. 3.2), opt-in with `hard_prototypes=k`: in
training mode the softmax runs over the batch's classes plus the k nearest prototypes of each (by centre
cosine, max over sub-centre pairs, computed without gradient from the current centres every step), instead
of all classes. `Cosines` then has one column per selected class (sorted by class id), labels remapped to
those columns, per-class margins picked alike; `columns` holds the selected class ids of the last forward
(None when every class took part). Eval mode uses every class. Only world size 1 is implemented (refused
when built otherwise, and with Partial FC); a sharded
run would all-gather the batch labels and their normalised centres, let every rank take the top-k among
its own classes, all-gather those candidates (k per batch class and rank), take the global top-k by cosine
and keep the selected classes of its own range (labels of other ranks' classes -> -1, as without mining).

Partial FC (An et al. 2022), opt-in with `sample_rate` < 1: in training mode each shard keeps the batch's
positive classes plus random others, about sample_rate·C_local columns (facelab.distributed.partial_fc),
handled like mined columns; the draw is seeded by (seed, sample_step buffer, rank). `seed`: centres (and
per-class margins) drawn per block of classes from seeded generators, the same for a class at any world
size; None: torch's global RNG, as before.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.distributed.partial_fc import check_sample_rate, sample_columns, seeded_normal, seeded_uniform
from facelab.errors import FacelabError
from facelab.heads.cosines import Cosines
from facelab.heads.normalized_linear import normalized_linear


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` holds; the first `num_classes % world_size` ranks get one more."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


def local_labels(labels: Tensor, start: int, end: int) -> Tensor:
    """Global labels [B] -> local columns [B]: label - start inside [start, end), -1 elsewhere."""
    inside = (labels >= start) & (labels < end)
    return torch.where(inside, labels - start, torch.full_like(labels, -1))


def target_cos(cos: Tensor, local: Tensor, world_size: int = 1) -> Tensor:
    """cos θ_y [B] of every sample, shared across ranks.

    Each rank contributes its column where the target is local and 0 elsewhere; the sum over ranks is
    cos θ_y. At world size 1 that sum is the local value (with its gradient); a sharded run all-reduces
    the contribution (facelab.distributed.ops.all_reduce_sum, differentiable).
    """
    picked = cos.gather(1, local.clamp(min=0)[:, None]).squeeze(1)  # [B]
    contribution = torch.where(local >= 0, picked, torch.zeros_like(picked))
    if world_size != 1:
        from facelab.distributed.ops import all_reduce_sum  # lazy: heads stay importable without it

        return all_reduce_sum(contribution)
    return contribution


def _positive_int(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FacelabError(f"classifier: {field}={value!r} is invalid: must be an integer >= 1")
    return value


def hard_prototypes(centres: Tensor, classes: Tensor, k: int) -> Tensor:
    """The k nearest other classes [U, k'] (k' = min(k, C - 1)) of each class in `classes` [U], by the cosine
    of their centres `centres` [C, K, d] (K sub-centres: the max over sub-centre pairs). No gradient."""
    with torch.no_grad():
        num, sub, _ = centres.shape
        unit = F.normalize(centres.reshape(num * sub, -1), dim=1)  # [C·K, d]
        mine = unit.view(num, sub, -1)[classes].reshape(len(classes) * sub, -1)  # [U·K, d]
        sim = (mine @ unit.T).view(len(classes), sub, num, sub).amax(dim=(1, 3))  # [U, C]
        sim[torch.arange(len(classes), device=sim.device), classes] = -float("inf")  # not its own neighbour
        return sim.topk(min(k, num - 1), dim=1).indices  # [U, k']


def _margin_init(value: object) -> tuple[float, float] | None:
    """None, or (low, high) with 0 <= low <= high finite: the uniform init range of the per-class margins."""
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

    class_margins=(low, high): also a learnable margin per local class, `class_margins` [C_local] init
    U(low, high), 1-D so that the trainer applies no weight decay to it (AdaM-Softmax). Default None.

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
            raise FacelabError(f"classifier: rank={rank!r} is invalid: must be in [0, {world_size})")
        if num_classes < world_size:
            raise FacelabError(f"classifier: num_classes={num_classes} is smaller than world_size={world_size}")
        if bias and normalize:
            raise FacelabError("classifier: bias=True needs normalize=False (a bias has no place in a cosine)")
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
        if self.sample_rate < 1.0:  # Partial FC: the step number seeds each step's class sample (resumable)
            self.register_buffer("sample_step", torch.zeros((), dtype=torch.int64))
        self._step: int | None = None  # sample_step as a Python int (reading the buffer on a GPU is a sync)
        self.hard_prototypes = hard_prototypes
        self.columns: Tensor | None = None  # class ids of the columns of the last forward; None: all classes

    @property
    def hard_prototypes(self) -> int:
        """k of Hard Prototype Mining (0: off); settable, validated."""
        return self._hard_prototypes

    @hard_prototypes.setter
    def hard_prototypes(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise FacelabError(f"classifier: hard_prototypes={k!r} is invalid: must be an integer >= 0")
        if k and not self.normalize:
            raise FacelabError("classifier: hard_prototypes needs normalize=True (cosine prototypes)")
        if k and (self.world_size != 1 or self.sample_rate < 1.0):
            raise FacelabError("classifier: hard_prototypes is implemented at world size 1 without Partial FC "
                               f"(world_size={self.world_size}, sample_rate={self.sample_rate})")
        self._hard_prototypes = k

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, classes=[{self.start}, {self.end}) of {self.num_classes}, "
            f"normalize={self.normalize}, bias={self.bias is not None}, sub_centers={self.sub_centers}, "
            f"rank={self.rank}, world_size={self.world_size}, class_margins={self.margin_init}, "
            f"hard_prototypes={self.hard_prototypes}, sample_rate={self.sample_rate}"
        )

    def check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise FacelabError(
                f"classifier: embeddings of shape {tuple(embeddings.shape)}, expected [B, {self.embedding_size}]"
            )
        if labels.dtype != torch.int64 or labels.shape != embeddings.shape[:1]:
            raise FacelabError(
                f"classifier: labels of shape {tuple(labels.shape)} and dtype {labels.dtype}, "
                f"expected [{embeddings.shape[0]}] int64"
            )
        if not labels.numel():
            return
        if labels.device.type != "cpu":  # an exact check would sync the device every step: assert on the device
            inside = ((labels >= 0) & (labels < self.num_classes)).all()
            torch._assert_async(inside, f"classifier: labels must be in [0, {self.num_classes})")
            return
        low, high = torch.aminmax(labels)
        if low < 0 or high >= self.num_classes:
            raise FacelabError(f"classifier: labels must be in [0, {self.num_classes}), got [{int(low)}, {int(high)}]")

    def cosines(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        """cos [B, C_local] (or raw logits when normalize=False) of float embeddings x [B, d];
        with `classes` [U] (local class indices), only those columns: [B, U]."""
        weight = self.weight.to(x.dtype)
        if not self.normalize:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            if classes is not None:  # Partial FC on raw logits (one centre per class)
                weight, bias = weight.index_select(0, classes), None if bias is None else bias.index_select(0, classes)
            return F.linear(x, weight, bias)
        num = self.num_local
        if classes is not None:  # index_select: its backward is an index_add, no host sync on a GPU
            weight = weight.view(num, -1).index_select(0, classes).view(-1, self.embedding_size)  # [U·K, d]
            num = len(classes)
        cos = normalized_linear(F.normalize(x, dim=1), weight).clamp(-1.0, 1.0)  # [B, num*K], no normalised W copy
        if self.sub_centers > 1:
            cos = cos.view(x.shape[0], num, self.sub_centers).max(dim=2).values  # [B, num]
        return cos

    def mined_classes(self, labels: Tensor) -> Tensor:
        """Hard Prototype Mining: sorted ids [U] of the batch's classes and of their k nearest prototypes."""
        if self.world_size != 1:
            raise NotImplementedError("hard prototype mining is implemented at world size 1 only (see doc)")
        batch = labels.unique()  # [U0]
        centres = self.weight.detach().view(self.num_local, self.sub_centers, -1)
        near = hard_prototypes(centres, batch, self.hard_prototypes)  # [U0, k]
        return torch.cat([batch, near.flatten()]).unique()  # [U], sorted

    def forward(self, embeddings: Tensor, labels: Tensor) -> Cosines:
        self.check_inputs(embeddings, labels)
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(dtype)  # [B, d]
            local = local_labels(labels, self.start, self.end)  # [B]
            margins = None if self.class_margins is None else self.class_margins.to(dtype)  # [C_local]
            self.columns = self.mined_classes(labels) if self.training and self.hard_prototypes else None
            if self.training and self.sample_rate < 1.0:
                self.columns = self.sampled_classes(local)  # [U] local ids (class ids - start)
            if self.columns is None:
                cos = self.cosines(x)  # [B, C_local]
            else:  # every local label is among the columns
                cos = self.cosines(x, self.columns)  # [B, U]
                inside = torch.searchsorted(self.columns, local.clamp(min=0))  # [B] column of each local label
                local = torch.where(local >= 0, inside, local)
                margins = None if margins is None else margins[self.columns]  # [U]
                self.columns = self.columns + self.start  # class ids of the columns
            cos_y = target_cos(cos, local, self.world_size)
            return Cosines(cos, local, cos_y, x.norm(dim=1), margins, self.world_size)

    def sampled_classes(self, local: Tensor) -> Tensor:
        """Partial FC: sorted local ids [U] of this step's positives plus random negatives (see partial_fc).
        The step number is read from the `sample_step` buffer once (after building or loading a state) and
        counted on the host from then on; the buffer is advanced on its device for the checkpoint."""
        step = int(self.sample_step) if self._step is None else self._step
        self._step = step + 1
        self.sample_step.add_(1)
        seed = 0 if self.seed is None else self.seed
        return sample_columns(local, self.num_local, self.sample_rate, (seed, step, self.rank))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._step = None  # a loaded sample_step: read it again at the next draw
