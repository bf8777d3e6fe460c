"""RecordIODataset: the images of an MXNet RecordIO file as a training dataset, without mxnet.

insightface layout (`train.rec`, `train.idx`, `property` = "num_classes,height,width"): record 0
has flag > 0 and labels (a, b); records 1..a-1 are images, records a..b-1 are identities whose
labels (start, end) are that identity's image record range [start, end). A file without that header
is read as plain image records, each with its own label.
"""

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.data.property import label_names, read_property
from facelab.data.recordio.framing import Damaged, DamagedRecord, note_damaged
from facelab.data.recordio.header import RecordHeader, label_int
from facelab.data.recordio.reader import RecordFile
from facelab.errors import FacelabError
from facelab.io import decode_image

log = logging.getLogger(__package__)  # facelab.data.recordio: one logger for the format


def _resolve(path: Path) -> tuple[Path, Path | None, Path | None]:
    """Folder or `.rec` -> (rec, idx or None, property or None)."""
    rec = path / "train.rec" if path.is_dir() else path
    if not rec.is_file():
        raise FacelabError(f"{path}: no RecordIO file (expected a .rec file or a folder holding "
                           "train.rec)")
    idx, prop = rec.with_suffix(".idx"), rec.parent / "property"
    return rec, idx if idx.is_file() else None, prop if prop.is_file() else None


class RecordIODataset(Dataset):
    """Images of an MXNet RecordIO file (insightface layout, or plain image records) without
    mxnet.

    Two item types, by design:
      - `ds[i]` (int): (RGB uint8 ndarray [H, W, 3], label) — for analysis and conversion;
      - `ds[(i, flip)]` (the sampler items of ImageFolderDataset): (uint8 tensor [3, H, W], label),
        flipped left-right when `flip` — so this is a drop-in training dataset.
    `labels` ([N] int64) comes from the identity records when the file has them (no pass over the
    images); each read checks the record's own label against it.

    `damaged` lists the (offset, reason) of every record left out or found unreadable: in a plain
    file every record is read to index it, so all of them are known at once (and left out of the
    dataset); in the insightface layout the images are not read up front, so it holds those the
    scan met (no `.idx`) and grows as `readable()` meets more (indexing `ds[i]` of a damaged image
    raises DamagedRecord).
    """

    def __init__(self, path: str | Path) -> None:
        self.rec_path, idx, prop = _resolve(Path(path))
        self.file = RecordFile(self.rec_path, idx)
        self.damaged: list[Damaged] = list(self.file.damaged)
        self.bad_images: list[tuple[str, str]] = []  # (record, reason) left out by the image check
        self.image_keys, self.labels = self._index()
        self.size: tuple[int, int] | None = None  # (H, W) from `property`
        if prop is not None:
            n, h, w = read_property(prop)
            self.size = (h, w)
            self._num_classes = n
        else:
            self._num_classes = self._header_classes or int(self.labels.max(initial=-1)) + 1
        if len(self.labels) and self.labels.max() >= self._num_classes:
            raise FacelabError(f"{self.rec_path}: label {self.labels.max()} >= "
                               f"{self._num_classes} classes")

    # -- index

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """(image record keys [N], labels [N]) from the header/identity records, else from every
        record."""
        self._header_classes = 0
        if len(self.file) and self.file.keys[0] == 0:
            head, image = self.file.read_image(0)
            if head.flag >= 2 and self._is_header(head.label):
                a, b = int(head.label[0]), int(head.label[1])
                self._header_classes = b - a
                return np.arange(1, a, dtype=np.int64), self._identity_labels(a, b)
            self._check_complete(head, image)
        return self._scan_labels()

    def _check_complete(self, head: RecordHeader, image: bytes) -> None:
        """FacelabError if record 0 is an insightface header (labels (a, b), no image) announcing
        more records than the file holds: the file lost its end. (Read as a plain file, the header
        would be an image of label a, and the error a label out of range.)"""
        if head.flag < 2 or image or not all(float(v).is_integer() for v in head.label[:2]):
            return
        a, b = int(head.label[0]), int(head.label[1])
        held = int(self.file.keys[-1]) + 1
        if not 1 <= a <= b or b <= held:
            return
        size, damaged, idx = self.file.size(), self.file.damaged, self.file.idx_path
        if idx is not None:
            cut = f"its index {idx} lists {held}"
        elif damaged:
            at = damaged[-1].offset
            cut = f"the file holds {held}, cut off in the record at byte offset {at}"
        else:
            cut = f"the file holds {held}, ending at byte offset {size}"
        raise FacelabError(f"{self.rec_path}: truncated: its header record announces {b} records "
                           f"({a - 1} images, {b - a} identities) but {cut} (file size {size})")

    def _is_header(self, label: np.ndarray) -> bool:
        a, b = float(label[0]), float(label[1])
        last = int(self.file.keys[-1])
        return a.is_integer() and b.is_integer() and 1 <= a <= b <= last + 1

    def _identity_labels(self, a: int, b: int) -> np.ndarray:
        labels = np.full(a - 1, -1, dtype=np.int64)
        for ident in range(b - a):
            where = f"{self.rec_path} identity record {a + ident}"
            head, _ = self.file.read_image(a + ident)
            if head.flag < 2:
                raise FacelabError(f"{self.rec_path}: identity record {a + ident} has no "
                                   "(start, end) labels")
            start, end = (label_int(v, where) for v in head.label[:2])
            if not 1 <= start <= end <= a:
                raise FacelabError(f"{self.rec_path}: identity record {a + ident} range "
                                   f"[{start}, {end}) is outside the image records [1, {a})")
            labels[start - 1 : end - 1] = ident
        for i in np.flatnonzero(labels < 0):  # images no identity claims: trust their own label
            labels[i] = self._record_label(int(i) + 1)
        return labels

    def _scan_labels(self) -> tuple[np.ndarray, np.ndarray]:
        keys, labels = [], []
        for key in self.file.keys:
            try:
                labels.append(self._record_label(int(key)))
                keys.append(int(key))
            except FacelabError as e:
                self._leave_out(int(key), e)
        return np.asarray(keys, dtype=np.int64), np.asarray(labels, dtype=np.int64)

    def _record_label(self, key: int) -> int:
        head, _ = self.file.read_image(key)
        return label_int(float(head.label[0]), f"{self.rec_path} record {key}")

    # -- access

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def classes(self) -> list[str]:
        """Zero-padded label names, sorted like the labels (RecordIO stores no identity names)."""
        return label_names(self._num_classes)

    def __len__(self) -> int:
        return len(self.image_keys)

    def raw(self, index: int) -> tuple[bytes, int]:
        """(encoded image bytes as stored, label) of image `index`, without decoding."""
        if not 0 <= index < len(self.image_keys):
            raise IndexError(f"image index {index} out of range for {len(self.image_keys)} images")
        key = int(self.image_keys[index])
        head, image = self.file.read_image(key)
        label = label_int(float(head.label[0]), f"{self.rec_path} record {key}")
        if label != self.labels[index]:
            raise FacelabError(f"{self.rec_path}: record {key} at byte offset "
                               f"{self.file.offset(key)} has label {label} but its identity "
                               f"record says {self.labels[index]}")
        return image, label

    def encoded(self, index: int) -> bytes:
        """Encoded image bytes of image `index` (for the image check); FacelabError naming the
        record."""
        return self.raw(index)[0]

    def image_name(self, index: int) -> str:
        key = int(self.image_keys[index])
        return f"{self.rec_path} record {key} at byte offset {self.file.offset(key)}"

    def exclude(self, indices: Iterable[int]) -> None:
        """Leave these images out (bad ones); the classes and every other label stay as they
        are."""
        drop = set(indices)
        if drop:
            keep = [i for i in range(len(self.image_keys)) if i not in drop]
            self.image_keys, self.labels = self.image_keys[keep], self.labels[keep]

    def readable(self) -> Iterator[tuple[int, bytes, int]]:
        """(index, encoded image bytes, label) of every image in order, leaving out (logged, and
        appended to `damaged`) those whose record is damaged. Other errors (a label its identity
        record contradicts) raise."""
        for index, key in enumerate(self.image_keys):
            try:
                data, label = self.raw(index)
            except DamagedRecord as e:
                self._leave_out(int(key), e)
                continue
            yield index, data, label

    def _leave_out(self, key: int, error: FacelabError) -> None:
        """List record `key` in `damaged`; logged unless the scan already reported that offset."""
        if note_damaged(self.damaged, self.file.offset(key), str(error)):
            log.warning("%s; record left out", error)

    def __getitem__(self, item: int | tuple[int, bool]
                    ) -> tuple[np.ndarray, int] | tuple[torch.Tensor, int]:
        if isinstance(item, tuple):
            index, flip = int(item[0]), bool(item[1])
        else:
            index, flip = int(item), None
        data, label = self.raw(index)
        key = int(self.image_keys[index])
        where = f"{self.rec_path} (record {key} at byte offset {self.file.offset(key)})"
        image = decode_image(data, where)
        if self.size is not None and image.shape[:2] != self.size:
            raise FacelabError(f"{self.rec_path}: record {key} is "
                               f"{image.shape[1]}x{image.shape[0]}, property says "
                               f"{self.size[1]}x{self.size[0]}")
        if flip is None:
            return image, label
        if flip:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label  # [3, H, W]
