"""A throw-away training folder of encoded JPEGs for the loader benchmarks (not a bench_* module)."""

from pathlib import Path

import cv2
import numpy as np

from facelab.io import encode_image


def make_jpeg_folder(root: Path, identities: int, per_identity: int, size: int = 112, seed: int = 0) -> Path:
    """`root/id<k>/<j>.jpg`: smooth colour fields (an 8×8 random field resized) plus pixel noise, JPEG
    quality 95, so that files (~5-10 kB) and decode cost resemble aligned face crops rather than pure noise."""
    rng = np.random.default_rng(seed)
    for k in range(identities):
        (root / f"id{k}").mkdir(parents=True, exist_ok=True)
        base = cv2.resize(rng.uniform(0, 255, (8, 8, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
        for j in range(per_identity):
            image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            (root / f"id{k}" / f"{j}.jpg").write_bytes(encode_image(image))
    return root
