"""RecordIO framing (dmlc-core `recordio.h`): records cut into chunks behind a magic number.

Every chunk is `magic` (uint32 LE 0xced7230a), `lrec` (uint32: cflag in the upper 3 bits, length in
the lower 29), payload, zero padding to 4 bytes. cflag 0 is a whole record; the writer escapes every
copy of the magic found at a 4-byte aligned payload position by cutting the record there into chunks
1 (start), 2 (middle), ..., 3 (end) and dropping the magic, which the reader puts back between
chunks. Chunk starts are therefore the only aligned magics of a valid file, which lets a scan find
the next record after a damaged stretch.
"""

import logging
import mmap
import struct
from typing import NamedTuple

import numpy as np

from facelab.errors import FacelabError

log = logging.getLogger(__package__)  # facelab.data.recordio: one logger for the format

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_CHUNK = struct.Struct("<II")  # magic, lrec


class DamagedRecord(FacelabError):
    """A record whose framing or image header cannot be read: the file's bytes are damaged there."""


class Damaged(NamedTuple):
    """A record left out: its byte offset and why (the error message, naming the file)."""

    offset: int
    reason: str


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def note_damaged(damaged: list[Damaged], offset: int, reason: str) -> bool:
    """Append (offset, reason) unless that offset is already listed (a scan and a read may meet it
    twice). True if it was new."""
    if any(d.offset == offset for d in damaged):
        return False
    damaged.append(Damaged(int(offset), reason))
    return True


def pack_record(payload: bytes) -> bytes:
    """Payload -> framed bytes, splitting at aligned copies of the magic exactly as dmlc's writer
    does."""
    if len(payload) > _LEN_MASK:
        raise FacelabError(f"record of {len(payload)} bytes exceeds the RecordIO limit of "
                           f"{_LEN_MASK}")
    out, start, i = [], 0, payload.find(_MAGIC_BYTES)
    while i >= 0:
        if i % 4 == 0:  # only aligned copies are escaped; i - start is then a multiple of 4
            cflag = 1 if start == 0 else 2
            out.append(_CHUNK.pack(MAGIC, (cflag << 29) | (i - start)) + payload[start:i])
            start = i + 4
        i = payload.find(_MAGIC_BYTES, i + 1)
    tail = payload[start:]
    out.append(_CHUNK.pack(MAGIC, ((3 if start else 0) << 29) | len(tail)) + tail)
    out.append(b"\0" * (_pad4(len(tail)) - len(tail)))
    return b"".join(out)


def read_record(buf: bytes | mmap.mmap, offset: int, where: str) -> tuple[bytes, int]:
    """(payload, offset of the next record) for the record starting at `offset`, joining split
    chunks.

    DamagedRecord naming `where` and the byte offset for a bad magic, flag or a record past the end
    of file.
    """
    parts, pos, n = [], offset, len(buf)
    while True:
        if pos + 8 > n:
            raise DamagedRecord(f"{where}: truncated record at byte offset {offset} "
                                f"(file ends at {n})")
        magic, lrec = _CHUNK.unpack_from(buf, pos)
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if magic != MAGIC:
            raise DamagedRecord(f"{where}: corrupt record at byte offset {offset} "
                                f"(no magic at {pos})")
        if cflag not in ((0, 1) if pos == offset else (2, 3)):
            raise DamagedRecord(f"{where}: corrupt record at byte offset {offset} "
                                f"(chunk flag {cflag} at {pos})")
        if pos + 8 + length > n:
            raise DamagedRecord(f"{where}: truncated record at byte offset {offset} "
                                f"(file ends at {n})")
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


def scan_offsets(buf: bytes | mmap.mmap, where: str,
                 damaged: list[Damaged] | None = None) -> np.ndarray:
    """Record start offsets found by walking the file (no `.idx`). [N] int64

    A bad stretch is logged, appended to `damaged` (when given) as (offset, reason), kept as ONE
    placeholder offset (reading it raises the error naming that offset, so later keys keep their
    numbers when a single record is damaged), and skipped by searching for the next aligned magic;
    the rest of the file stays usable.
    """
    offsets, pos = [], 0
    while pos < len(buf):
        offsets.append(pos)
        try:
            pos = read_record(buf, pos, where)[1]
        except DamagedRecord as e:
            log.warning("%s; skipping to the next record", e)
            if damaged is not None:
                note_damaged(damaged, pos, str(e))
            pos = _next_start(buf, pos + 4)
    return np.asarray(offsets, dtype=np.int64)
