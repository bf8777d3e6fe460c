"""Model input preprocessing. Stored with every checkpoint so a model is evaluated as it was trained."""

import torch

# The insightface convention: RGB, (x/255 - 0.5)/0.5, ArcFace 112×112 template.
PREPROCESS_DEFAULT: dict = {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5, "std": 0.5}


def to_input(images: torch.Tensor, preprocess: dict | None = None) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] -> float [B, 3, H, W] as the model expects (colour order, mean/std)."""
    p = preprocess or PREPROCESS_DEFAULT
    x = images.float().div(255.0)
    if p["colour"] == "BGR":
        x = x.flip(1)
    return (x - p["mean"]) / p["std"]
