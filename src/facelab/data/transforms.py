"""Model input preprocessing. Stored with every checkpoint so a model is evaluated as it was
trained.

Images travel as RGB uint8; the model sees float (x/255 - mean)/std in its own colour order.
"""

import numpy as np
import torch

from facelab.errors import FacelabError

# The insightface convention: RGB, (x/255 - 0.5)/0.5, ArcFace 112×112 template.
PREPROCESS_DEFAULT: dict = {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5,
                            "std": 0.5}


def check_preprocess(preprocess: dict | None) -> dict:
    """PREPROCESS_DEFAULT updated with `preprocess`; unknown keys or bad values are errors."""
    pre = {**PREPROCESS_DEFAULT, **(preprocess or {})}
    unknown = set(pre) - set(PREPROCESS_DEFAULT)
    if unknown:
        raise FacelabError(f"preprocess: unknown key(s) {sorted(unknown)}; known: "
                           f"{sorted(PREPROCESS_DEFAULT)}")
    if pre["colour"] not in ("RGB", "BGR"):
        raise FacelabError(f"preprocess.colour must be 'RGB' or 'BGR', got {pre['colour']!r}")
    for key in ("mean", "std"):
        v = np.asarray(pre[key], dtype=np.float64)
        if v.shape not in ((), (3,)) or not np.isfinite(v).all():
            raise FacelabError(f"preprocess.{key} must be a number or 3 numbers, got {pre[key]!r}")
    if np.any(np.asarray(pre["std"]) == 0):
        raise FacelabError("preprocess.std must be non-zero")
    return pre


def to_input(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] -> float32 [B, 3, H, W] as the model expects (checked
    `preprocess`)."""
    x = images.float().div(255.0)
    if preprocess["colour"] == "BGR":
        x = x.flip(1)
    mean = _channel_values(preprocess["mean"], x.device)
    std = _channel_values(preprocess["std"], x.device)
    return (x - mean) / std


def _channel_values(value: float | list, device: torch.device) -> float | torch.Tensor:
    """A number as a Python float, 3 numbers as float32 [3, 1, 1] on `device`. A float needs no
    host-to-device copy, which on CUDA (pageable memory, blocking) would stall the host every
    training step."""
    if np.ndim(value) == 0:
        return float(np.float32(value))  # the float32 value the tensor path would use
    values = torch.as_tensor(value, dtype=torch.float32).reshape(-1, 1, 1)  # [3, 1, 1]
    return values.to(device, non_blocking=True)
