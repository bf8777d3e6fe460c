"""The training task: backbone + head -> loss dict. The loop only sees this module."""

from pathlib import Path

import torch
from torch import nn

from facelab.backbones import build_backbone
from facelab.config import Config, config_from_dict
from facelab.data.transforms import check_preprocess, to_input
from facelab.errors import FacelabError
from facelab.heads import build_head
from facelab.train.checkpoint import load_checkpoint


class FaceTask(nn.Module):
    """images uint8 [B, 3, H, W] + labels [B] -> {"loss": total, "ce": ..., ...}."""

    def __init__(self, cfg: Config, num_classes: int, preprocess: dict) -> None:
        super().__init__()
        self.preprocess = check_preprocess(preprocess)
        self.backbone = build_model(cfg)
        reserved = {"embedding_size", "num_classes", "sub_centers", "margin"} & set(cfg.head.kwargs)
        if reserved:
            raise FacelabError(f"config head.kwargs.{sorted(reserved)[0]}: set by the data or its own config key")
        self.head = build_head(
            cfg.head.margin,
            cfg.model.embedding_size,
            num_classes,
            sub_centers=cfg.head.sub_centers,
            **cfg.head.kwargs,
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = self.backbone(to_input(images, self.preprocess))  # [B, d]
        return self.head(embeddings, labels)


def build_model(cfg: Config) -> nn.Module:
    """The embedding network alone (what evaluation and export use)."""
    return build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size, **cfg.model.kwargs)


def load_model(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """(embedding network in eval mode, its preprocessing) from a checkpoint file or run folder."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["preprocess"]
