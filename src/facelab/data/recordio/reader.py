"""Keyed random access to the records of a `.rec` file: through its `.idx` ("key\\toffset" text, one
line per record) or, without one, a scan of the framing (facelab.data.recordio.framing)."""

import io
import logging
import mmap
import os
from pathlib import Path

import numpy as np

from facelab.data.recordio.framing import Damaged, read_record, scan_offsets
from facelab.data.recordio.header import RecordHeader, unpack_image
from facelab.errors import FacelabError

log = logging.getLogger(__package__)  # facelab.data.recordio: one logger for the format


def read_idx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`.idx` -> (keys, offsets), both [N] int64 sorted by key."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FacelabError(f"{path}: cannot read index ({e})") from None
    if not text.strip():
        raise FacelabError(f"{path}: index is empty")
    try:  # [N, 2]; numpy's C parser, fast on millions of lines
        table = np.loadtxt(io.StringIO(text), dtype=np.int64, ndmin=2)
    except ValueError:
        table = np.zeros((0, 3), dtype=np.int64)
    if table.shape[1:] != (2,) or table.min() < 0:
        lines = enumerate(text.splitlines(), 1)
        bad = next((n for n, line in lines if line.strip() and not _idx_line_ok(line)), 0)
        raise FacelabError(f"{path}: line {bad} is not 'key<TAB>offset' "
                           "(two non-negative integers)")
    order = np.argsort(table[:, 0], kind="stable")
    keys, offsets = table[order, 0], table[order, 1]
    if len(keys) > 1 and np.any(np.diff(keys) == 0):
        twice = int(keys[np.flatnonzero(np.diff(keys) == 0)[0]])
        raise FacelabError(f"{path}: key {twice} appears twice")
    return keys, offsets


def _idx_line_ok(line: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and all(p.isdigit() for p in parts)


class RecordFile:
    """Keyed random access to the records of a `.rec`, through its `.idx` or, without one, a scan.

    The file is memory-mapped lazily and re-mapped in each process (after a DataLoader fork), and
    the map is never pickled, so the object can be handed to loader workers. `damaged`: the
    (offset, reason) of every damaged stretch the scan met (empty with an `.idx`, which is trusted
    and not walked).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.path = Path(rec_path)
        self.idx_path = None if idx_path is None else Path(idx_path)
        self._mm: mmap.mmap | None = None
        self._pid = -1
        self.damaged: list[Damaged] = []
        if idx_path is not None:
            self.keys, self.offsets = read_idx(Path(idx_path))
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
        """Byte offset of record `key`; FacelabError naming the key if the file has no such
        record."""
        i = key if self._dense else int(np.searchsorted(self.keys, key))
        if not (0 <= i < len(self.keys) and self.keys[i] == key):
            raise FacelabError(f"{self.path}: no record with key {key}")
        return int(self.offsets[i])

    def read(self, key: int) -> bytes:
        """Payload of record `key` (split chunks joined)."""
        return read_record(self._map(), self.offset(key), str(self.path))[0]

    def read_image(self, key: int) -> tuple[RecordHeader, bytes]:
        """(header, encoded image bytes) of image record `key`."""
        where = f"{self.path} (record {key} at byte offset {self.offset(key)})"
        return unpack_image(self.read(key), where)
