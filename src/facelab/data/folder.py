"""Image-folder dataset: one sub-folder per identity, aligned face crops inside."""

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.errors import FacelabError
from facelab.io import IMAGE_SUFFIXES, read_image, read_image_bytes

log = logging.getLogger(__name__)


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(identity names sorted, [(image path, label)]) for `root/<identity>/<image>`.

    An identity folder without images is not a class (a class no image shows would only add a centre
    nothing trains); they are reported in one warning."""
    root = Path(root)
    if not root.is_dir():
        raise FacelabError(f"{root}: training folder does not exist")
    files = {p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
             for p in root.iterdir() if p.is_dir()}
    classes = sorted(name for name, images in files.items() if images)
    empty = sorted(name for name, images in files.items() if not images)
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        log.warning("%s: %d identity folder%s without images, not counted as classes: %s", root,
                    len(empty), "s" if len(empty) > 1 else "", shown)
    samples = [(p, label) for label, name in enumerate(classes) for p in files[name]]
    if not samples:
        raise FacelabError(f"{root}: no images found (expected {root}/<identity>/<image>.jpg)")
    return classes, samples


class ImageFolderDataset(Dataset):
    """Items are (index, flip) pairs chosen by the sampler, so that augmentation is reproducible
    whatever the number of loader workers. Returns (uint8 [3, H, W] RGB, label)."""

    def __init__(self, root: str | Path, preload: bool = False) -> None:
        self.root = Path(root)
        self.classes, self.samples = self._scan()
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.bad_images: list[tuple[str, str]] = []  # (file, reason) left out by the image check
        self._cache: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None  # every image must match the first one read
        if preload:
            self.preload()

    def _scan(self) -> tuple[list[str], list[tuple[Path, int]]]:
        return scan_folder(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def encoded(self, index: int) -> bytes:
        """The image file's bytes as stored (for the image check); FacelabError naming it if
        unreadable."""
        return read_image_bytes(self.samples[index][0])

    def image_name(self, index: int) -> str:
        return str(self.samples[index][0])

    def exclude(self, indices: Iterable[int]) -> None:
        """Leave these images out (bad ones); the classes and every other label stay as they are."""
        drop = set(indices)
        if drop:
            keep = [i for i in range(len(self.samples)) if i not in drop]
            self.samples = [self.samples[i] for i in keep]
            self.labels = self.labels[keep]
            self._cache = None if self._cache is None else self._cache[keep]

    def preload(self) -> None:
        """Decode every image (OpenCV, in this process) into memory."""
        self.set_cache([self._read(i) for i in range(len(self.samples))])

    def set_cache(self, images: np.ndarray | list[np.ndarray]) -> None:
        """Keep these decoded images (RGB [H, W, 3], one per sample, in order; a list of one size,
        or an array [N, H, W, 3]) in memory: the preload."""
        if isinstance(images, list):
            odd = next((i for i, im in enumerate(images) if im.shape != images[0].shape), None)
            if odd is not None:
                raise FacelabError(f"{self.samples[odd][0]}: size {images[odd].shape} differs from "
                                   f"{images[0].shape}")
            images = np.stack(images)
        if len(images) != len(self.samples):
            raise FacelabError(f"{self.root}: {len(images)} preloaded images for "
                               f"{len(self.samples)} samples")
        self._cache = images  # [N, H, W, 3]
        log.info("preloaded %d images from %s", len(images), self.root)

    def _read(self, index: int) -> np.ndarray:
        image = read_image(self.samples[index][0])
        if self._shape is not None and image.shape != self._shape:
            raise FacelabError(f"{self.samples[index][0]}: size {image.shape} differs from "
                               f"{self._shape}")
        self._shape = image.shape
        return image

    def __getitem__(self, item: tuple[int, bool] | int) -> tuple[torch.Tensor, int]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        image = self._cache[index] if self._cache is not None else self._read(index)
        if flip:
            image = image[:, ::-1]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))  # [3, H, W]
        return torch.from_numpy(chw), int(self.labels[index])
