"""Image-folder dataset: one sub-folder per identity, aligned face crops inside."""

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.errors import FacelabError
from facelab.io import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(identity names sorted, [(image path, label)]) for `root/<identity>/<image>`."""
    root = Path(root)
    if not root.is_dir():
        raise FacelabError(f"{root}: training folder does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [(p, label) for p in files]
    if not samples:
        raise FacelabError(f"{root}: no images found (expected {root}/<identity>/<image>.jpg)")
    return classes, samples


class ImageFolderDataset(Dataset):
    """Items are (index, flip) pairs chosen by the sampler, so that augmentation is reproducible
    whatever the number of loader workers. Returns (uint8 [3, H, W] RGB, label)."""

    def __init__(self, root: str | Path, preload: bool = False) -> None:
        self.root = Path(root)
        self.classes, self.samples = scan_folder(self.root)
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self._cache: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None  # every image must match the first one read
        if preload:
            self._cache = np.stack([self._read(i) for i in range(len(self.samples))])  # [N, H, W, 3]
            log.info("preloaded %d images from %s", len(self.samples), self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> np.ndarray:
        image = read_image(self.samples[index][0])
        if self._shape is not None and image.shape != self._shape:
            raise FacelabError(f"{self.samples[index][0]}: size {image.shape} differs from {self._shape}")
        self._shape = image.shape
        return image

    def __getitem__(self, item: tuple[int, bool] | int) -> tuple[torch.Tensor, int]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        image = self._cache[index] if self._cache is not None else self._read(index)
        if flip:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(self.labels[index])
