"""facelab: train, evaluate and deploy deep face-recognition models."""

__version__ = "0.1.0"
