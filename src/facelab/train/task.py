"""The training task: backbone + head -> loss dict. The loop only sees this module.

Auxiliary losses: a submodule of the embedding network with an `aux_losses()` method (GroupFace) hands
its weighted terms of the last training forward as {name: scalar}; they join the loss dict under their
names and are added to "loss", so the loop logs them as loss/<name>.

Extra objectives: `task.objectives` (a ModuleDict, empty by default) holds modules called as
`objective(embeddings [B, d], labels [B], **extras) -> {term: weighted scalar}` after the head (pair losses,
distillation, dataset classifiers); their terms join the loss dict and "loss" the same way. `extras` are
the optional third element of a loader batch, a dict of per-sample tensors (e.g. an easy/hard flag),
passed through unchanged; an objective takes the keys it needs and ignores the rest.
"""

from pathlib import Path

import torch
from torch import nn

from facelab.backbones import build_backbone, check_backbone
from facelab.backbones.groupface import GroupFace
from facelab.config import Config, config_from_dict
from facelab.data.transforms import check_preprocess, to_input
from facelab.distill.setup import build_objective
from facelab.errors import FacelabError
from facelab.heads import build_head
from facelab.losses.pairs import NoHead, build_objectives
from facelab.train.checkpoint import load_checkpoint, resolve_checkpoint
from facelab.train.dail import attach_dail


class FaceTask(nn.Module):
    """images uint8 [B, 3, H, W] + labels [B] -> {"loss": total, "ce": ..., ...}."""

    def __init__(self, cfg: Config, num_classes: int, preprocess: dict, shard: tuple[int, int] = (0, 1),
                 offsets: list[int] | None = None) -> None:
        """shard: (rank, world_size) of a multi-process run; the classifier holds that rank's classes.
        offsets: [D + 1] first class of each dataset of a multi-dataset run (facelab.data.multi); else None."""
        super().__init__()
        self.preprocess = check_preprocess(preprocess)
        self.backbone = build_model(cfg)
        if shard[1] > 1 and cfg.model.groupface.groups:
            raise FacelabError("config model.groupface: GroupFace's self-distributed labels use one process's batch "
                               "mean; not implemented for more than one process")
        if shard[1] > 1 and cfg.train.amp == "fp16":  # each rank's scaler would skip steps on its own shard's inf
            raise FacelabError("config train.amp: 'fp16' is not implemented for more than one process; use bf16")
        check_names(cfg)
        objectives = build_objectives(cfg)  # objective: pairs -> no classifier head (an empty NoHead)
        self.head = NoHead() if cfg.objective == "pairs" else build_head(
            cfg.head.margin,
            cfg.model.embedding_size,
            num_classes,
            sub_centers=cfg.head.sub_centers,
            classifier_kwargs={"rank": shard[0], "world_size": shard[1], "sample_rate": cfg.head.sample_rate,
                               "seed": cfg.seed},
            **cfg.head.kwargs,
        )
        if not isinstance(self.head, NoHead):
            self.head.classifier.hard_prototypes = cfg.head.hard_prototypes  # AdaptiveFace HPM; 0: off
        self.correct: torch.Tensor | None = None  # [B] bool of the last forward (Adaptive Data Sampling)
        # computed only for Adaptive Data Sampling: an argmax over [B, C_local] and, sharded, two all-gathers
        self.track_correct = cfg.data.adaptive_sampling.enabled
        self.objectives = nn.ModuleDict(objectives)  # extra loss terms on the embeddings (see the module docstring)
        # (backbone as the training forward runs it: DDP-wrapped and/or torch.compiled,) or (); not a submodule
        self.parallel: tuple[nn.Module, ...] = ()
        if cfg.distill.name == "ddl":  # DDL between easy and hard images (facelab.distill)
            self.objectives["ddl"] = build_objective(cfg.distill)
        attach_dail(self, cfg, offsets)  # DAIL dataset mask and dataset classifier, when configured

    def set_step(self, step: int) -> None:
        """Tell step-scheduled parts (objectives, the DAIL dataset mask's dropout draw) the training step."""
        for part in [*self.objectives.values(), getattr(self.head, "dataset_mask", None)]:
            if hasattr(part, "step"):
                part.step = step

    def forward(self, images: torch.Tensor, labels: torch.Tensor, **extras: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = (self.parallel or (self.backbone,))[0](to_input(images, self.preprocess))  # [B, d]
        losses, logits = self.head.forward_with_logits(embeddings, labels)
        self.correct = self._correct(logits, labels) if self.track_correct and logits is not None else None
        for module in self.backbone.modules():
            _add_terms(losses, getattr(module, "aux_losses", dict)(), type(module).__name__)
        for name, objective in self.objectives.items():
            _add_terms(losses, objective(embeddings, labels, **extras), f"objective {name!r}")
        return losses

    @torch.no_grad()
    def _correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B] bool: the highest training logit is the label's (the sample meets its margin)."""
        columns = self.head.classifier.columns  # class id of each column (hard prototypes, Partial FC)
        if self.head.classifier.world_size != 1:  # [N·b] of the gathered batch
            from facelab.distributed.loss import sharded_correct

            return sharded_correct(logits, self.head.batch_labels, self.head.classifier.start, columns)
        pred = logits.argmax(dim=1)  # [B]
        return (pred + self.head.classifier.start if columns is None else columns[pred]) == labels


def check_names(cfg: Config) -> None:
    """Every registry name and keyword argument of `cfg` (backbone, margin, pair loss, miner, ...), checked
    by building the cheap parts (a 4-class head, the objectives): a typo fails before the data is read."""
    try:
        check_backbone(cfg.model.backbone, cfg.model.embedding_size, **cfg.model.kwargs)
    except FacelabError as e:
        raise FacelabError(f"config model: {e}") from None
    build_objectives(cfg)
    reserved = {"embedding_size", "num_classes", "sub_centers", "margin"} & set(cfg.head.kwargs)
    if reserved:
        raise FacelabError(f"config head.kwargs.{sorted(reserved)[0]}: set by the data or its own config key")
    if cfg.objective != "pairs":
        try:
            with torch.random.fork_rng(devices=[]):  # the probe's init must not move the run's draws
                build_head(cfg.head.margin, cfg.model.embedding_size, 4, sub_centers=cfg.head.sub_centers,
                           **cfg.head.kwargs)  # 4 classes: enough for every margin's own checks (AdaCos: 3)
        except FacelabError as e:
            raise FacelabError(f"config head: {e}") from None


def _add_terms(losses: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], owner: str) -> None:
    """Join weighted loss terms into the loss dict (names must be new) and add them to "loss"."""
    for name, value in terms.items():
        if name in losses:
            raise FacelabError(f"loss term {name!r} of {owner} clashes with an existing loss term")
        losses[name] = value
        losses["loss"] = losses["loss"] + value


def build_model(cfg: Config) -> nn.Module:
    """The embedding network alone (what evaluation and export use); GroupFace-wrapped if configured."""
    backbone = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size, **cfg.model.kwargs)
    gf, size = cfg.model.groupface, cfg.model.embedding_size
    return backbone if gf.groups == 0 else GroupFace(backbone, size, size, gf.groups, gf.lam, gf.hidden)


def load_model(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """(embedding network in eval mode, its preprocessing) from a checkpoint file, a run folder or an
    exported `.onnx` model (`facelab export`; then an onnxruntime-backed module, facelab.export.OnnxEmbedder).
    Either way the model maps to_input(images) float32 [B, 3, H, W] to raw embeddings [B, d]."""
    path = resolve_checkpoint(checkpoint)
    if path.suffix.lower() == ".onnx":
        from facelab.export import load_onnx  # lazy: onnxruntime is an optional dependency

        return load_onnx(path)
    return model_from_checkpoint(load_checkpoint(path))


def model_from_checkpoint(ckpt: dict) -> tuple[nn.Module, dict]:
    """(embedding network in eval mode, its preprocessing) from a loaded checkpoint dict."""
    model = build_model(config_from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["preprocess"]
