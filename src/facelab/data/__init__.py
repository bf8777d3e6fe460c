"""Datasets, loaders and the synthetic-faces generator."""

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from facelab.data.check import BadImage, require_identities, screen_training_set
from facelab.data.formats import FORMATS, detect_format


def open_training_set(path: str | Path, preload: bool = False, check_images: bool = True,
                      skip_bad: bool = False) -> Dataset:
    """The training dataset at `path`, in any format of facelab.data.formats.FORMATS: an image
    folder (one sub-folder per identity), MXNet RecordIO (a folder holding
    train.rec/train.idx/property, or a .rec file) or a file list (a folder holding list.txt, or a
    .txt list). Items are (index, flip) pairs.

    A set with fewer than 2 identities is refused. With `check_images`, every image is decoded
    strictly first (facelab.data.check): bad ones are a FacelabError, or with `skip_bad` left out
    and listed in the dataset's `bad_images` [(name, reason)] (always present, empty when none).
    `preload` keeps the decoded images in memory (folders and lists; RecordIO is
    memory-mapped)."""
    fmt = FORMATS[detect_format(Path(path))]
    dataset = fmt.open(Path(path))
    require_identities(dataset.labels, str(path))
    cache = preload and not fmt.packed
    if check_images:
        size = getattr(dataset, "size", None)  # RecordIO's `property` states it
        screen_training_set(dataset, str(path), skip_bad, cache, size, _damaged_records(dataset))
        require_identities(dataset.labels, str(path))  # the bad images may have been all of some
    elif cache:
        dataset.preload()
    return dataset


def _damaged_records(dataset: Dataset) -> list:
    """Damaged RecordIO records that a scan left out of the images (a plain file), as bad
    images."""
    damaged = getattr(dataset, "damaged", None)
    if not damaged:
        return []
    file = dataset.file
    held = set(file.offsets[np.searchsorted(file.keys, dataset.image_keys)].tolist())
    return [BadImage(f"{dataset.rec_path} at byte offset {d.offset}", d.reason) for d in damaged
            if d.offset not in held]
