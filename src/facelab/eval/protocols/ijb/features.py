"""IJB per-image features: align each loose crop by its 5 landmarks (parallel decode), embed it."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from facelab.align import align_face
from facelab.data.transforms import check_preprocess
from facelab.errors import FacelabError
from facelab.eval.embed import eval_mode, forward_batches
from facelab.eval.protocols.ijb.meta import IJBMeta
from facelab.io import die_with_parent, read_image

log = logging.getLogger(__name__)


def _load_aligned(job: tuple[str, np.ndarray, str, int]) -> np.ndarray:
    """Worker: a loose crop read and warped by its 5 landmarks to the aligned crop [S, S, 3]."""
    path, landmarks, template, size = job
    return align_face(read_image(Path(path)), landmarks, size=size, template=template)


def _init_worker() -> None:
    """Spawned worker: one OpenCV and one torch thread each, and exit with the parent."""
    die_with_parent()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _aligned_windows(jobs: list, window: int, workers: int) -> Iterator[np.ndarray]:
    """Aligned crops [w, S, S, 3] window by window; with workers the next window loads meanwhile."""
    chunks = [jobs[i : i + window] for i in range(0, len(jobs), window)]
    if workers <= 0:
        for chunk in chunks:
            yield np.stack([_load_aligned(j) for j in chunk])
        return
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent holds torch/OpenMP threads
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
    try:
        pending = pool.map(_load_aligned, chunks[0], chunksize=16)  # submitted now, read below
        for k in range(len(chunks)):
            images = list(pending)
            if k + 1 < len(chunks):
                pending = pool.map(_load_aligned, chunks[k + 1], chunksize=16)
            yield np.stack(images)
    except BrokenProcessPool as e:
        raise FacelabError(
            f"IJB features: a crop-loading worker died ({e}); try workers=0"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def extract_features(
    model: nn.Module,
    meta: IJBMeta,
    batch_size: int = 256,
    flip: bool = True,
    preprocess: dict | None = None,
    device: str | torch.device = "cpu",
    workers: int = 2,
    window: int = 4096,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Align every loose crop with its 5 landmarks and embed it: (f(x) [N, d], f(flip x) [N, d] or
    None).

    Decoding and alignment run in `workers` spawned processes (0: in this process), `window` crops
    at a time, the next window loading while the model embeds this one: memory stays bounded by two
    windows.
    """
    pre = check_preprocess(preprocess)
    crops = meta.root / "loose_crop"
    jobs = [
        (str(crops / n), meta.landmarks[i], pre["template"], pre["size"])
        for i, n in enumerate(meta.names)
    ]
    feats, flips = [], []
    with eval_mode(model):
        for images in _aligned_windows(jobs, window, workers):
            f, ff = forward_batches(model, images, pre, device, batch_size, flip)
            feats.append(f)
            if flip:
                flips.append(ff)
            log.info("IJB features: %d / %d crops", sum(len(a) for a in feats), len(jobs))
    return np.concatenate(feats), (np.concatenate(flips) if flip else None)
