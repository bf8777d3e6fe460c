"""Embed aligned face crops for evaluation, insightface style: f(x) + f(flip x), L2-normalised.

Images arrive as RGB uint8 [N, H, W, 3] (112x112 arcface crops from a `.bin` pair set, an aligned
folder or IJB loose crops aligned by their landmarks). Preprocessing follows the checkpoint's
record (`PREPROCESS_DEFAULT` is arcface_torch's): reverse the channels first when the model was
trained on BGR, then x / 255 and (x - mean) / std. Every protocol embeds through here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelab.data.folder import ImageFolderDataset
from facelab.data.transforms import check_preprocess, to_input
from facelab.errors import FacelabError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() and no_grad for the block; each submodule's training flag restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _forward(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Model output as float32 [B, d]; of a tuple/list output, the first element (the embedding)."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = getattr(out, "shape", type(out).__name__)
        raise FacelabError(f"embed: the model must return [B, d] embeddings, got {shape}")
    return out.float().cpu().numpy()


def _check_images(images: np.ndarray) -> None:
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        desc = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise FacelabError(f"embed: images must be RGB uint8 [N, H, W, 3], got {desc}")
    if len(images) == 0:
        raise FacelabError("embed: no images given")


def forward_batches(
    model: nn.Module,
    images: np.ndarray,
    pre: dict,
    device: str | torch.device,
    batch_size: int,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(f(x) [N, d], f(flip x) [N, d] or None) in batches; call it inside `eval_mode(model)`, with
    a checked `pre`."""
    feats, flips = [], []
    for start in range(0, len(images), batch_size):
        # uint8 [B, 3, H, W]
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
        x = to_input(batch.to(device), pre)  # [B, 3, H, W]
        feats.append(_forward(model, x))  # [B, d]
        if flip:
            flips.append(_forward(model, torch.flip(x, dims=[3])))
    return np.concatenate(feats), (np.concatenate(flips) if flip else None)


def embed_raw(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 256,
    flip: bool = True,
    preprocess: dict | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Un-normalised features (f(x) [N, d], f(flip x) [N, d] or None) of RGB uint8 images [N, H, W,
    3].

    The model must already live on `device`; it runs in eval mode under no_grad and every
    submodule's training flag is restored afterwards.
    """
    _check_images(images)
    if batch_size < 1:
        raise FacelabError(f"embed: batch_size must be >= 1, got {batch_size}")
    pre = check_preprocess(preprocess)
    with eval_mode(model):
        return forward_batches(model, images, pre, device, batch_size, flip)


def embed_images(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 256,
    flip: bool = True,
    preprocess: dict | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """L2-normalised embeddings float32 [N, d] of RGB uint8 images [N, H, W, 3].

    With flip (insightface's test-time rule) the embedding is f(x) + f(horizontal flip of x), summed
    before normalising (see `embed_raw` for the model's mode and device).
    """
    feats, flips = embed_raw(model, images, batch_size, flip, preprocess, device)
    emb = feats if flips is None else feats + flips  # [N, d]
    norms = np.linalg.norm(emb, axis=1, keepdims=True)  # [N, 1]
    return (emb / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def embed_folder(
    model: nn.Module, preprocess: dict | None, root: Path, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, list[str], list[Path]]:
    """embed_images of an aligned folder `root/<identity>/<image>`, `batch_size` images at a time.

    Returns (embeddings float32 [N, d], class index per image [N], class names, image paths).
    """
    ds = ImageFolderDataset(root)
    chunks = []
    for start in range(0, len(ds), batch_size):
        stop = min(start + batch_size, len(ds))
        images = np.stack([ds[i][0].permute(1, 2, 0).numpy() for i in range(start, stop)])
        chunks.append(embed_images(model, images, batch_size=batch_size, preprocess=preprocess))
    return np.concatenate(chunks), ds.labels, ds.classes, [p for p, _ in ds.samples]
