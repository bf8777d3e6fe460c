"""Checkpoints: one file holding everything to resume or to use the model.

Written atomically (temporary file, then rename), so a crash mid-write leaves the previous checkpoint.
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

import facelab
from facelab.errors import FacelabError
from facelab.io import write_atomic

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state(device: torch.device | None = None) -> dict:
    """Global RNG states as tensors and plain values, so checkpoints load with weights_only=True; on a CUDA
    `device` also its generator's (ElasticFace's margins and PML's random miners draw there)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":  # this process's device only: every rank seeds alike
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore `rng_state`'s states; the CUDA one when both the checkpoint and `device` are CUDA (a run
    resumed on another kind of device draws its device numbers afresh)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
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
    path = resolve_checkpoint(path)
    if path.suffix.lower() == ".onnx":  # evaluation takes one (train.task.load_model); nothing else can
        raise FacelabError(f"{path}: an exported ONNX model holds the embedding network only (no classifier, "
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
