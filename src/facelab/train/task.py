"""The training task: embedding network + head + objectives -> loss dict. The loop only sees this.

The head (facelab.heads) gives the classification loss; the objectives (facelab.losses.OBJECTIVES)
add their weighted terms, which join the loss dict under their names and are added to "loss", so the
loop logs them as loss/<name>. A pair-loss run (objective: pairs) has no head.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from facelab.backbones import check_backbone
from facelab.config import Config
from facelab.data.transforms import check_preprocess, to_input
from facelab.distributed.ops import gather_rows
from facelab.errors import FacelabError
from facelab.heads import FaceHead, build_head
from facelab.heads.dataset_mask import DatasetMask
from facelab.losses import build_objectives
from facelab.losses.pairs import pairs_objective
from facelab.model import build_model
from facelab.train.finetune import check_freeze, freeze_parameters, frozen_batchnorms


class TaskOutput(NamedTuple):
    """One training forward."""

    losses: dict[str, Tensor]  # "loss" (the total to back-propagate) and every term
    # [B] bool, the label's logit is the highest (global batch when sharded); only when the task
    # tracks it (Adaptive Data Sampling)
    correct: Tensor | None


class FaceTask(nn.Module):
    """images uint8 [B, 3, H, W] + labels [B] (+ extras) -> TaskOutput."""

    def __init__(self, cfg: Config, num_classes: int, preprocess: dict,
                 shard: tuple[int, int] = (0, 1), offsets: list[int] | None = None) -> None:
        """shard: (rank, world_size) of a multi-process run; the classifier holds that rank's
        classes.
        offsets: [D + 1] first class of each dataset of a multi-dataset run (facelab.data.multi)."""
        super().__init__()
        check_task(cfg, shard[1], offsets)
        self.preprocess = check_preprocess(preprocess)
        self.backbone = build_model(cfg)
        # train.freeze: these backbone parts keep their weights and BN statistics (finetune.py)
        self.freeze = tuple(cfg.train.freeze)
        self.frozen_parameters = freeze_parameters(self.backbone, self.freeze)  # values frozen
        if shard[1] > 1 and not any(p.requires_grad for p in self.backbone.parameters()):
            raise FacelabError("config train.freeze: freezes the whole backbone, which "
                               "DistributedDataParallel refuses; train the head on one process")
        self.head = (
            None if cfg.objective == "pairs" else task_head(cfg, num_classes, shard, offsets)
        )
        self.objectives = nn.ModuleDict(build_objectives(cfg, self.backbone, offsets))
        # an argmax over [B, C_local] and, sharded, two all-gathers: only for Adaptive Data Sampling
        self.track_correct = cfg.data.adaptive_sampling.enabled
        self.wrap_backbone(lambda backbone: backbone)
        self.train(self.training)  # the frozen parts' BatchNorm layers in eval mode from the start

    def train(self, mode: bool = True) -> "FaceTask":
        """nn.Module.train, with the BatchNorm layers of frozen backbone parts (train.freeze) kept
        in eval mode: they neither normalise by the batch nor update their running statistics."""
        super().train(mode)
        if mode:
            for bn in frozen_batchnorms(self.backbone, self.freeze):
                bn.eval()
        return self

    def wrap_backbone(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Run the training forward through wrap(backbone) (DDP, torch.compile); evaluation and
        checkpoints use the plain backbone (the same weights)."""
        # a reference, not a submodule: the state dict holds the backbone once
        object.__setattr__(self, "train_backbone", wrap(self.backbone))

    def set_step(self, step: int) -> None:
        """Tell the step-scheduled parts (DAIL's GRL, the crossing-dropout draw) the training
        step."""
        if self.head is not None:
            self.head.set_step(step)
        for objective in self.objectives.values():
            objective.set_step(step)

    def after_step(self) -> None:
        """After each optimiser step: projections of stored values onto their bounds (AdaM-Softmax
        margins in [0, 1])."""
        if self.head is not None:
            self.head.after_step()

    def forward(self, images: Tensor, labels: Tensor, **extras: Tensor) -> TaskOutput:
        embeddings = self.train_backbone(to_input(images, self.preprocess))  # [B, d]
        if self.head is None:  # objective: pairs, the objectives' terms are the whole loss
            losses, correct = {"loss": embeddings.new_zeros(())}, None
        else:
            x, y = embeddings, labels
            if self.head.sharded:  # [N·b, d], [N·b]: every rank's classes meet the global batch
                x, y = gather_rows(x), gather_rows(y)
            out = self.head.forward_with_logits(x, y)
            losses = out.losses
            correct = self.head.correct(out, y) if self.track_correct else None
        for name, objective in self.objectives.items():
            _add_terms(losses, objective(embeddings, labels, **extras), f"objective {name!r}")
        return TaskOutput(losses, correct)


def task_head(cfg: Config, num_classes: int, shard: tuple[int, int], offsets: list[int] | None,
              ) -> FaceHead:
    """The configured head on this rank's share of the classes."""
    mask = None
    if cfg.head.dataset_aware:  # DAIL: each sample's softmax over its own dataset's classes
        mask = DatasetMask(offsets, cfg.head.crossing_dropout, cfg.seed)
    h = cfg.head
    shards = {"rank": shard[0], "world_size": shard[1], "sample_rate": h.sample_rate,
              "seed": cfg.seed, "hard_prototypes": h.hard_prototypes}
    return build_head(h.margin, cfg.model.embedding_size, num_classes, sub_centers=h.sub_centers,
                      classifier_kwargs=shards, dataset_mask=mask, **h.kwargs)


def check_world(cfg: Config, world_size: int) -> None:
    """What a task of `cfg` refuses at this world size (checked before any data is read)."""
    if world_size > 1 and cfg.model.groupface.groups:
        raise FacelabError("config model.groupface: GroupFace's self-distributed labels use one "
                           "process's batch mean; not implemented for more than one process")
    if world_size > 1 and cfg.train.amp == "fp16":  # each rank's scaler would skip its own infs
        raise FacelabError("config train.amp: 'fp16' is not implemented for more than one process; "
                           "use bf16")


def check_task(cfg: Config, world_size: int, offsets: list[int] | None) -> None:
    """What a task of `cfg` refuses at this world size and with these datasets."""
    check_names(cfg)
    check_world(cfg, world_size)
    wanted = cfg.head.dataset_aware or cfg.dail.weight > 0
    if wanted and cfg.objective == "pairs":
        raise FacelabError("config head.dataset_aware / dail.weight: not available with objective: "
                           "pairs (no head)")
    if wanted and (offsets is None or len(offsets) < 3):
        raise FacelabError("config head.dataset_aware / dail.weight: need data.datasets with at "
                           "least 2 datasets")


def check_names(cfg: Config) -> None:
    """Every registry name and keyword argument of `cfg` (backbone, margin, pair loss, miner, ...),
    checked by building the cheap parts (a 4-class head, the objectives): a typo fails before the
    data is read."""
    try:
        check_backbone(cfg.model.backbone, cfg.model.embedding_size, **cfg.model.kwargs)
    except FacelabError as e:
        raise FacelabError(f"config model: {e}") from None
    check_freeze(cfg)  # every train.freeze entry names backbone parameters
    pairs_objective(cfg)
    reserved = {"embedding_size", "num_classes", "sub_centers", "margin"} & set(cfg.head.kwargs)
    if reserved:
        raise FacelabError(
            f"config head.kwargs.{sorted(reserved)[0]}: set by the data or its own config key"
        )
    if cfg.objective != "pairs":
        try:
            # the probe's init must not move the run's draws
            with torch.random.fork_rng(devices=[]):
                # 4 classes: enough for every margin's own checks (AdaCos: 3)
                build_head(
                    cfg.head.margin,
                    cfg.model.embedding_size,
                    4,
                    sub_centers=cfg.head.sub_centers,
                    **cfg.head.kwargs,
                )
        except FacelabError as e:
            raise FacelabError(f"config head: {e}") from None


def _add_terms(losses: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], owner: str) -> None:
    """Join weighted loss terms into the loss dict (names must be new) and add them to "loss"."""
    for name, value in terms.items():
        if name in losses:
            raise FacelabError(f"loss term {name!r} of {owner} clashes with an existing loss term")
        losses[name] = value
        losses["loss"] = losses["loss"] + value
