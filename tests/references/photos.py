"""The real face photographs that install offline (ASSETS.md) and small model runs to read them.

scikit-image's astronaut (one frontal face) and camera (a man with a camera, grayscale), and
matplotlib's Grace Hopper: public-domain or CC0 photos, not generated, so the detector and the
alignment meet real faces in tests.
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from facelab.config import config_from_dict, config_to_dict
from facelab.io import read_image
from facelab.model import build_model, save_checkpoint


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # RGB uint8 [512, 512, 3]


def camera() -> np.ndarray:
    from skimage import data

    return data.camera()  # grayscale uint8 [512, 512]


def hopper() -> np.ndarray:
    import matplotlib.cbook

    return read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def collage(images: list[np.ndarray], height: int = 240, gap: int = 40) -> np.ndarray:
    """The photos (RGB or grayscale) resized to `height` and set side by side on a grey canvas."""
    tiles = []
    for image in images:
        rgb = np.repeat(image[:, :, None], 3, 2) if image.ndim == 2 else image
        width = round(rgb.shape[1] * height / rgb.shape[0])
        tiles.append(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
    canvas = np.full((height + 2 * gap, sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1),
                      3), 128, np.uint8)
    x = gap
    for tile in tiles:
        canvas[gap : gap + height, x : x + tile.shape[1]] = tile
        x += tile.shape[1] + gap
    return canvas


def rotate_expand(image: np.ndarray, degrees: float) -> np.ndarray:
    """The photo rotated counter-clockwise by `degrees`, the canvas grown so nothing is cut."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    c, s = abs(matrix[0, 0]), abs(matrix[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    matrix[0, 2] += nw / 2 - w / 2
    matrix[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(image, matrix, (nw, nh))


def model_run(folder: Path, thresholds: dict | None = None, embedding_size: int = 16,
              seed: int = 0) -> Path:
    """A run folder holding a randomly initialised tiny embedding network (nothing trained) and,
    when given, stored operating points ({set: {"accuracy": {"threshold": t, ...}}})."""
    cfg = config_from_dict({"model": {"backbone": "tiny", "embedding_size": embedding_size,
                                      "kwargs": {"width": 4}}})
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    payload = {"model": model.state_dict(), "config": config_to_dict(cfg),
               "preprocess": {"template": "arcface112", "size": 112}, "step": 1}
    if thresholds is not None:
        payload["thresholds"] = thresholds
    save_checkpoint(Path(folder) / "checkpoint.pt", payload)
    return Path(folder)
