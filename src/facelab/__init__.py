"""facelab: train, evaluate and deploy deep face-recognition models."""

from pathlib import Path

__version__ = "0.1.0"
CONFIGS = Path(__file__).parent / "configs"  # the YAML recipes shipped with the package
