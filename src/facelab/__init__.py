"""facelab: train, evaluate and deploy deep face-recognition models."""

from pathlib import Path

__version__ = "0.1.0"
CONFIGS = Path(__file__).parent / "configs"  # the YAML recipes shipped with the package


def __getattr__(name: str) -> object:
    """`from facelab import Recognizer` loads facelab.recognize (and torch) on first use only, so
    that `import facelab` and `facelab --help` stay light."""
    if name == "Recognizer":
        from facelab.recognize import Recognizer

        return Recognizer
    raise AttributeError(f"module 'facelab' has no attribute {name!r}")
