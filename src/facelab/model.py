"""A trained model on disk: the checkpoint file and the embedding network it holds.

A checkpoint is one file holding everything to use the model (weights, config, preprocessing record,
deployed thresholds) and, for a run, to resume it (facelab.train.checkpoint). It is written
atomically (a temporary file, then a rename), so a crash mid-write leaves the previous one.
Evaluation, export and the other consumers of a model load it from here, never from the trainer.
"""

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

import facelab
from facelab.backbones import build_backbone
from facelab.backbones.groupface import GroupFace
from facelab.config import Config, config_from_dict
from facelab.errors import FacelabError
from facelab.io import write_atomic
from facelab.onnx_model import load_onnx

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (with the facelab version) to `path` atomically."""
    payload = {**payload, "facelab_version": facelab.__version__}
    write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file (or an exported `.onnx` model), or a run folder holding `checkpoint.pt`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FacelabError(f"{path}: no checkpoint found")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a file or run folder; one-line FacelabError for anything else."""
    path = resolve_checkpoint(path)
    if path.suffix.lower() == ".onnx":  # evaluation takes one (load_model); nothing else can
        raise FacelabError(
            f"{path}: an exported ONNX model holds the embedding network only (no classifier, "
            "config or training state); give the run folder or its checkpoint.pt here")
    try:
        # weights_only: tensors and plain containers only, so a crafted file cannot run code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise FacelabError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    for key in ("model", "config", "preprocess"):
        if key not in ckpt:
            raise FacelabError(f"{path}: not a facelab checkpoint (missing {key!r})")
    return ckpt


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every entry's name, dtype, shape and bytes, in name order.

    It names the weights, not the file: a checkpoint and its ONNX export (which records it) give
    the same digest, so a gallery built with one accepts the other (facelab.recognize)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)  # [n]
        digest.update(f"{name}|{tensor.dtype}|{tuple(state[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def build_model(cfg: Config) -> nn.Module:
    """The embedding network of `cfg` (GroupFace-wrapped if configured), freshly initialised."""
    size = cfg.model.embedding_size
    backbone = build_backbone(cfg.model.backbone, embedding_size=size, **cfg.model.kwargs)
    gf = cfg.model.groupface
    if gf.groups == 0:
        return backbone
    return GroupFace(backbone, size, size, gf.groups, gf.lam, gf.hidden)


def model_from_checkpoint(ckpt: dict) -> tuple[nn.Module, dict]:
    """(embedding network in eval mode, its preprocessing record) of a loaded checkpoint dict."""
    model = build_model(config_from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["preprocess"]


def load_model(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """(embedding network in eval mode, its preprocessing record) of a checkpoint file, a run folder
    or an exported `.onnx` model (then an onnxruntime-backed facelab.onnx_model.OnnxEmbedder).
    Either way the model maps to_input(images) float32 [B, 3, H, W] to raw embeddings [B, d]."""
    path = resolve_checkpoint(checkpoint)
    if path.suffix.lower() == ".onnx":
        return load_onnx(path)
    return model_from_checkpoint(load_checkpoint(path))
