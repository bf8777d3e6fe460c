"""Datasets, loaders and the synthetic-faces generator."""

from pathlib import Path

from torch.utils.data import Dataset

from facelab.errors import FacelabError


def open_training_set(path: str | Path, preload: bool = False) -> Dataset:
    """The training dataset at `path`: an image folder (one sub-folder per identity) or MXNet RecordIO
    (a folder holding train.rec/train.idx/property, or a .rec file). Items are (index, flip) pairs."""
    from facelab.data.convert import detect_format
    from facelab.data.folder import ImageFolderDataset
    from facelab.data.recordio import RecordIODataset

    fmt = detect_format(Path(path))
    if fmt == "folder":
        return ImageFolderDataset(path, preload=preload)
    if fmt == "rec":
        return RecordIODataset(path)  # memory-mapped already: preload adds nothing
    raise FacelabError(f"{path}: a {fmt} training set cannot be read directly; `facelab convert` it first")
