"""MXNet RecordIO (`.rec` + `.idx`) in pure Python: framing, image records, the insightface layout.

Framing (dmlc-core `recordio.h`): every chunk is `magic` (uint32 LE 0xced7230a), `lrec` (uint32: cflag in
the upper 3 bits, length in the lower 29), payload, zero padding to 4 bytes. cflag 0 is a whole record;
the writer escapes every copy of the magic found at a 4-byte aligned payload position by cutting the record
there into chunks 1 (start), 2 (middle), ..., 3 (end) and dropping the magic, which the reader puts back
between chunks. Chunk starts are therefore the only aligned magics of a valid file.

Image record payload (mxnet.recordio.pack): `IfQQ` header (flag uint32, label float32, id uint64,
id2 uint64), then, when flag > 0, `flag` float32 labels (the header label is then ignored), then the
encoded image. `.idx` is text, one "key\\toffset" line per record.

Damaged records (bad framing or image header, DamagedRecord) are not fatal: the readers keep a list
`damaged` of (offset, reason) for every record they skipped, which `facelab convert` reports.

insightface layout (`train.rec`, `train.idx`, `property` = "num_classes,height,width"): record 0 has
flag > 0 and labels (a, b); records 1..a-1 are images, records a..b-1 are identities whose labels
(start, end) are that identity's image record range [start, end).
"""

import io
import itertools
import logging
import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.errors import FacelabError
from facelab.io import (
    decode_image,
    follow_umask,
    fsync_file,
    remove_stale_temps,
    temp_beside,
    write_atomic,
)

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_CHUNK = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2 (24 bytes, no padding)
_MAX_EXACT = 1 << 24  # float32 labels hold integers exactly up to here


class DamagedRecord(FacelabError):
    """A record whose framing or image header cannot be read: the file's bytes are damaged there."""


class Damaged(NamedTuple):
    """A record left out: its byte offset and why (the error message, naming the file)."""

    offset: int
    reason: str


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _note(damaged: list[Damaged], offset: int, reason: str) -> bool:
    """Append (offset, reason) unless that offset is already listed (a scan and a read may meet it twice).
    True if it was new."""
    if any(d.offset == offset for d in damaged):
        return False
    damaged.append(Damaged(int(offset), reason))
    return True


# ---------------------------------------------------------------- framing


def pack_record(payload: bytes) -> bytes:
    """Payload -> framed bytes, splitting at aligned copies of the magic exactly as dmlc's writer does."""
    if len(payload) > _LEN_MASK:
        raise FacelabError(f"record of {len(payload)} bytes exceeds the RecordIO limit of {_LEN_MASK}")
    out, start, i = [], 0, payload.find(_MAGIC_BYTES)
    while i >= 0:
        if i % 4 == 0:  # only aligned copies are escaped; i - start is then a multiple of 4 (no padding)
            out.append(_CHUNK.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (i - start)) + payload[start:i])
            start = i + 4
        i = payload.find(_MAGIC_BYTES, i + 1)
    tail = payload[start:]
    out.append(_CHUNK.pack(MAGIC, ((3 if start else 0) << 29) | len(tail)) + tail)
    out.append(b"\0" * (_pad4(len(tail)) - len(tail)))
    return b"".join(out)


def read_record(buf: bytes | mmap.mmap, offset: int, where: str) -> tuple[bytes, int]:
    """(payload, offset of the next record) for the record starting at `offset`, joining split chunks.

    DamagedRecord naming `where` and the byte offset for a bad magic, flag or a record past the end of file.
    """
    parts, pos, n = [], offset, len(buf)
    while True:
        if pos + 8 > n:
            raise DamagedRecord(f"{where}: truncated record at byte offset {offset} (file ends at {n})")
        magic, lrec = _CHUNK.unpack_from(buf, pos)
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if magic != MAGIC:
            raise DamagedRecord(f"{where}: corrupt record at byte offset {offset} (no magic at {pos})")
        if cflag not in ((0, 1) if pos == offset else (2, 3)):
            raise DamagedRecord(f"{where}: corrupt record at byte offset {offset} "
                                f"(chunk flag {cflag} at {pos})")
        if pos + 8 + length > n:
            raise DamagedRecord(f"{where}: truncated record at byte offset {offset} (file ends at {n})")
        parts.append(buf[pos + 8 : pos + 8 + length])
        pos += 8 + _pad4(length)
        if cflag in (0, 3):
            return b"".join(parts), pos
        parts.append(_MAGIC_BYTES)


def _next_start(buf: bytes | mmap.mmap, pos: int) -> int:
    """First 4-byte aligned chunk start with flag 0 or 1 at or after `pos`; len(buf) if none."""
    pos = _pad4(pos)
    while (pos := buf.find(_MAGIC_BYTES, pos)) >= 0 and pos + 8 <= len(buf):
        if pos % 4 == 0 and _CHUNK.unpack_from(buf, pos)[1] >> 29 in (0, 1):
            return pos
        pos += 1
    return len(buf)


def scan_offsets(buf: bytes | mmap.mmap, where: str, damaged: list[Damaged] | None = None) -> np.ndarray:
    """Record start offsets found by walking the file (no `.idx`). [N] int64

    A bad stretch is logged, appended to `damaged` (when given) as (offset, reason), kept as ONE placeholder
    offset (reading it raises the error naming that offset, so later keys keep their numbers when a single
    record is damaged), and skipped by searching for the next aligned magic; the rest of the file stays usable.
    """
    offsets, pos = [], 0
    while pos < len(buf):
        offsets.append(pos)
        try:
            pos = read_record(buf, pos, where)[1]
        except DamagedRecord as e:
            log.warning("%s; skipping to the next record", e)
            if damaged is not None:
                _note(damaged, pos, str(e))
            pos = _next_start(buf, pos + 4)
    return np.asarray(offsets, dtype=np.int64)


# ---------------------------------------------------------------- image records


class RecordHeader(NamedTuple):
    """`IfQQ` image record header; `label` holds the `flag` float labels, or the header label if flag is 0."""

    flag: int
    label: np.ndarray  # [max(flag, 1)] float32
    id: int
    id2: int


def pack_image(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Image record payload: one label (flag 0) or a label vector (flag = its length) + encoded image."""
    if isinstance(label, int | float | np.integer | np.floating):
        return _IR.pack(0, float(label), id, id2) + image
    labels = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(labels.size, 0.0, id, id2) + labels.tobytes() + image


def unpack_image(payload: bytes, where: str) -> tuple[RecordHeader, bytes]:
    """Image record payload -> (header, encoded image bytes); DamagedRecord if the header does not fit."""
    if len(payload) < _IR.size:
        raise DamagedRecord(f"{where}: record of {len(payload)} bytes is shorter than its 24-byte header")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    end = _IR.size + 4 * flag
    if len(payload) < end:
        raise DamagedRecord(f"{where}: header announces {flag} labels but the record holds "
                            f"{len(payload)} bytes")
    labels = np.frombuffer(payload, "<f4", flag, _IR.size) if flag else np.array([label], np.float32)
    return RecordHeader(flag, labels.astype(np.float32), id_, id2), payload[end:]


def _as_int(value: float, where: str) -> int:
    if not (value >= 0 and float(value).is_integer()):
        raise FacelabError(f"{where}: label {value} is not a non-negative integer")
    return int(value)


# ---------------------------------------------------------------- files


def _read_idx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`.idx` -> (keys, offsets), both [N] int64 sorted by key."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FacelabError(f"{path}: cannot read index ({e})") from None
    if not text.strip():
        raise FacelabError(f"{path}: index is empty")
    try:
        table = np.loadtxt(io.StringIO(text), dtype=np.int64, ndmin=2)  # [N, 2]; C parser, fast on millions
    except ValueError:
        table = np.zeros((0, 3), dtype=np.int64)
    if table.shape[1:] != (2,) or table.min() < 0:
        lines = enumerate(text.splitlines(), 1)
        bad = next((n for n, line in lines if line.strip() and not _idx_line_ok(line)), 0)
        raise FacelabError(f"{path}: line {bad} is not 'key<TAB>offset' (two non-negative integers)")
    order = np.argsort(table[:, 0], kind="stable")
    keys, offsets = table[order, 0], table[order, 1]
    if len(keys) > 1 and np.any(np.diff(keys) == 0):
        raise FacelabError(f"{path}: key {int(keys[np.flatnonzero(np.diff(keys) == 0)[0]])} appears twice")
    return keys, offsets


def _idx_line_ok(line: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and all(p.isdigit() for p in parts)


class RecordFile:
    """Keyed random access to the records of a `.rec`, through its `.idx` or, without one, a scan.

    The file is memory-mapped lazily and re-mapped in each process (after a DataLoader fork), and the map is
    never pickled, so the object can be handed to loader workers. `damaged`: the (offset, reason) of every
    damaged stretch the scan met (empty with an `.idx`, which is trusted and not walked).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.path = Path(rec_path)
        self.idx_path = None if idx_path is None else Path(idx_path)
        self._mm: mmap.mmap | None = None
        self._pid = -1
        self.damaged: list[Damaged] = []
        if idx_path is not None:
            self.keys, self.offsets = _read_idx(Path(idx_path))
        else:
            self.offsets = scan_offsets(self._map(), str(self.path), self.damaged)
            self.keys = np.arange(len(self.offsets), dtype=np.int64)
            log.info("scanned %s: %d records (no .idx)", self.path, len(self.offsets))
        self._dense = bool(np.array_equal(self.keys, np.arange(len(self.keys))))

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None, "_pid": -1}

    def _map(self) -> mmap.mmap:
        if self._mm is None or self._pid != os.getpid():
            try:
                with open(self.path, "rb") as f:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                raise FacelabError(f"{self.path}: record file is empty") from None
            except OSError as e:
                raise FacelabError(f"{self.path}: cannot open record file ({e.strerror})") from None
            self._pid = os.getpid()
        return self._mm

    def size(self) -> int:
        """The file's length in bytes."""
        return len(self._map())

    def offset(self, key: int) -> int:
        """Byte offset of record `key`; FacelabError naming the key if the file has no such record."""
        i = key if self._dense else int(np.searchsorted(self.keys, key))
        if not (0 <= i < len(self.keys) and self.keys[i] == key):
            raise FacelabError(f"{self.path}: no record with key {key}")
        return int(self.offsets[i])

    def read(self, key: int) -> bytes:
        """Payload of record `key` (split chunks joined)."""
        return read_record(self._map(), self.offset(key), str(self.path))[0]

    def read_image(self, key: int) -> tuple[RecordHeader, bytes]:
        """(header, encoded image bytes) of image record `key`."""
        return unpack_image(self.read(key), f"{self.path} (record {key} at byte offset {self.offset(key)})")


# ---------------------------------------------------------------- dataset


def read_property(path: Path) -> tuple[int, int, int]:
    """insightface `property` file -> (num_classes, height, width)."""
    try:
        fields = [int(v) for v in path.read_text().strip().split(",")]
    except (OSError, UnicodeDecodeError, ValueError):
        raise FacelabError(f"{path}: expected one line 'num_classes,height,width'") from None
    if len(fields) != 3 or min(fields) < 1:
        raise FacelabError(f"{path}: expected three positive integers 'num_classes,height,width'")
    return fields[0], fields[1], fields[2]


def _resolve(path: Path) -> tuple[Path, Path | None, Path | None]:
    """Folder or `.rec` -> (rec, idx or None, property or None)."""
    rec = path / "train.rec" if path.is_dir() else path
    if not rec.is_file():
        raise FacelabError(f"{path}: no RecordIO file (expected a .rec file or a folder holding train.rec)")
    idx, prop = rec.with_suffix(".idx"), rec.parent / "property"
    return rec, idx if idx.is_file() else None, prop if prop.is_file() else None


class RecordIODataset(Dataset):
    """Images of an MXNet RecordIO file (insightface layout, or plain image records) without mxnet.

    Two item types, by design:
      - `ds[i]` (int): (RGB uint8 ndarray [H, W, 3], label) — for analysis and conversion;
      - `ds[(i, flip)]` (the sampler items of ImageFolderDataset): (uint8 tensor [3, H, W], label), flipped
        left-right when `flip` — so this is a drop-in training dataset.
    `labels` ([N] int64) comes from the identity records when the file has them (no pass over the images);
    each read checks the record's own label against it.

    `damaged` lists the (offset, reason) of every record left out or found unreadable: in a plain file every
    record is read to index it, so all of them are known at once (and left out of the dataset); in the
    insightface layout the images are not read up front, so it holds those the scan met (no `.idx`) and grows
    as `readable()` meets more (indexing `ds[i]` of a damaged image raises DamagedRecord).
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
            raise FacelabError(f"{self.rec_path}: label {self.labels.max()} >= {self._num_classes} classes")

    # -- index

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """(image record keys [N], labels [N]) from the header/identity records, else from every record."""
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
            head, _ = self.file.read_image(a + ident)
            if head.flag < 2:
                raise FacelabError(f"{self.rec_path}: identity record {a + ident} has no (start, end) labels")
            start, end = (_as_int(v, f"{self.rec_path} identity record {a + ident}") for v in head.label[:2])
            if not 1 <= start <= end <= a:
                raise FacelabError(f"{self.rec_path}: identity record {a + ident} range [{start}, {end}) "
                                   f"is outside the image records [1, {a})")
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
        return _as_int(float(head.label[0]), f"{self.rec_path} record {key}")

    # -- access

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def classes(self) -> list[str]:
        """Zero-padded label names, sorted like the labels (RecordIO stores no identity names)."""
        width = len(str(max(self._num_classes - 1, 0)))
        return [f"{c:0{width}d}" for c in range(self._num_classes)]

    def __len__(self) -> int:
        return len(self.image_keys)

    def raw(self, index: int) -> tuple[bytes, int]:
        """(encoded image bytes as stored, label) of image `index`, without decoding."""
        if not 0 <= index < len(self.image_keys):
            raise IndexError(f"image index {index} out of range for {len(self.image_keys)} images")
        key = int(self.image_keys[index])
        head, image = self.file.read_image(key)
        label = _as_int(float(head.label[0]), f"{self.rec_path} record {key}")
        if label != self.labels[index]:
            raise FacelabError(f"{self.rec_path}: record {key} at byte offset {self.file.offset(key)} has "
                               f"label {label} but its identity record says {self.labels[index]}")
        return image, label

    def encoded(self, index: int) -> bytes:
        """Encoded image bytes of image `index` (for the image check); FacelabError naming the
        record."""
        return self.raw(index)[0]

    def image_name(self, index: int) -> str:
        key = int(self.image_keys[index])
        return f"{self.rec_path} record {key} at byte offset {self.file.offset(key)}"

    def exclude(self, indices: Iterable[int]) -> None:
        """Leave these images out (bad ones); the classes and every other label stay as they are."""
        drop = set(indices)
        if drop:
            keep = [i for i in range(len(self.image_keys)) if i not in drop]
            self.image_keys, self.labels = self.image_keys[keep], self.labels[keep]

    def readable(self) -> Iterator[tuple[int, bytes, int]]:
        """(index, encoded image bytes, label) of every image in order, leaving out (logged, and appended to
        `damaged`) those whose record is damaged. Other errors (a label its identity record contradicts) raise."""
        for index, key in enumerate(self.image_keys):
            try:
                data, label = self.raw(index)
            except DamagedRecord as e:
                self._leave_out(int(key), e)
                continue
            yield index, data, label

    def _leave_out(self, key: int, error: FacelabError) -> None:
        """List record `key` in `damaged`; logged unless the scan already reported that offset."""
        if _note(self.damaged, self.file.offset(key), str(error)):
            log.warning("%s; record left out", error)

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[np.ndarray, int] | tuple[torch.Tensor, int]:
        index, flip = (int(item[0]), bool(item[1])) if isinstance(item, tuple) else (int(item), None)
        data, label = self.raw(index)
        key = int(self.image_keys[index])
        image = decode_image(data, f"{self.rec_path} (record {key} at byte offset {self.file.offset(key)})")
        if self.size is not None and image.shape[:2] != self.size:
            raise FacelabError(f"{self.rec_path}: record {key} is {image.shape[1]}x{image.shape[0]}, "
                               f"property says {self.size[1]}x{self.size[0]}")
        if flip is None:
            return image, label
        if flip:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label  # [3, H, W]


# ---------------------------------------------------------------- writer


def write_recordio(out_dir: Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                   image_size: int | tuple[int, int]) -> None:
    """Write `train.rec`, `train.idx`, `property` in the insightface layout (see module docstring)."""
    out_dir = Path(out_dir)
    write_rec_files(out_dir / "train.rec", out_dir / "train.idx", out_dir / "property", samples, num_classes,
                    image_size)


def write_rec_files(rec: Path, idx: Path, prop: Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                    image_size: int | tuple[int, int]) -> None:
    """`write_recordio` with explicit file names. Images are stored sorted by label (stable), so each
    identity's range is contiguous; the encoded bytes are copied as given. Two passes (the images go to a
    scratch file first), so memory stays small. Atomic: temporary files are renamed into place (`.rec`,
    `.idx`, then `property` last; an old `property` is removed first), with the user's umask;
    scratch files a killed writer left in the folder are removed first."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if num_classes < 1 or len(size) != 2 or min(size) < 1:
        raise FacelabError(f"num_classes {num_classes} and image size {image_size} must be positive")
    h, w = size
    rec.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(rec.parent)  # a killed writer's scratch files
    tmps = [temp_beside(rec, tag=".blob"), temp_beside(rec), temp_beside(idx)]
    try:
        with open(tmps[0], "wb") as blob:
            labels, spans = _write_blob(blob, samples, num_classes)
        offsets = _write_sorted(tmps[0], tmps[1], labels, spans, num_classes)
        tmps[2].write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
        for tmp in tmps[1:]:
            fsync_file(tmp)  # on disk before a rename makes it visible
            follow_umask(tmp)  # mkstemp made them private
        prop.unlink(missing_ok=True)
        os.replace(tmps[1], rec)
        os.replace(tmps[2], idx)
        write_atomic(prop, lambda p: p.write_text(f"{num_classes},{h},{w}\n"))
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)
    log.info("wrote %s: %d images, %d identities", rec, len(labels), num_classes)


def _write_blob(blob: BinaryIO, samples: Iterable[tuple[int, bytes]],
                num_classes: int) -> tuple[np.ndarray, list]:
    """Pass 1: encoded images back to back in input order. Returns (labels [N], [(offset, length)])."""
    labels, spans, pos = [], [], 0
    for i, (label, data) in enumerate(samples):
        if not isinstance(label, int | np.integer) or not 0 <= label < num_classes:
            raise FacelabError(f"sample {i}: label {label!r} is not an integer in [0, {num_classes})")
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
            raise FacelabError(f"sample {i}: expected non-empty encoded image bytes, "
                               f"got {type(data).__name__}")
        blob.write(data)
        labels.append(int(label))
        spans.append((pos, len(data)))
        pos += len(data)
    if not labels:
        raise FacelabError("no images to write")
    if len(labels) + num_classes + 1 > _MAX_EXACT:
        raise FacelabError(f"{len(labels)} images + {num_classes} identities exceed the 2^24 records that "
                           "float32 header labels can number exactly")
    return np.asarray(labels, dtype=np.int64), spans


def _write_sorted(blob_path: Path, out_path: Path, labels: np.ndarray, spans: list,
                  num_classes: int) -> list[int]:
    """Pass 2: header (key 0), images sorted by label (keys 1..a-1), identities (keys a..b-1) -> out_path.
    Returns the byte offset of every key."""
    order = np.argsort(labels, kind="stable")
    a, b = len(labels) + 1, len(labels) + 1 + num_classes
    # identity c covers image keys [bounds[c], bounds[c + 1])
    bounds = 1 + np.searchsorted(labels[order], np.arange(num_classes + 1))
    offsets, pos = [], 0
    with open(blob_path, "rb") as f, open(out_path, "wb") as out:
        blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            images = ((k, float(labels[i]), blob[spans[i][0] : sum(spans[i])])
                      for k, i in enumerate(order, 1))
            identities = ((a + c, (int(bounds[c]), int(bounds[c + 1])), b"") for c in range(num_classes))
            for key, label, image in itertools.chain([(0, (a, b), b"")], images, identities):
                framed = pack_record(pack_image(label, image, id=key))
                out.write(framed)
                offsets.append(pos)
                pos += len(framed)
        finally:
            blob.close()
    return offsets
