"""MXNet image records (mxnet.recordio.pack): an `IfQQ` header, optional labels, encoded image.

The payload is the header (flag uint32, label float32, id uint64, id2 uint64), then, when flag > 0,
`flag` float32 labels (the header label is then ignored), then the encoded image bytes as stored.
"""

import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from facelab.data.recordio.framing import DamagedRecord
from facelab.errors import FacelabError

_IR = struct.Struct("<IfQQ")  # flag, label, id, id2 (24 bytes, no padding)


class RecordHeader(NamedTuple):
    """`IfQQ` image record header; `label` holds the `flag` float labels, or the header label if
    flag is 0."""

    flag: int
    label: np.ndarray  # [max(flag, 1)] float32
    id: int
    id2: int


def pack_image(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Image record payload: one label (flag 0) or a label vector (flag = its length) + encoded
    image."""
    if isinstance(label, int | float | np.integer | np.floating):
        return _IR.pack(0, float(label), id, id2) + image
    labels = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(labels.size, 0.0, id, id2) + labels.tobytes() + image


def unpack_image(payload: bytes, where: str) -> tuple[RecordHeader, bytes]:
    """Image record payload -> (header, encoded image bytes); DamagedRecord if the header does not
    fit."""
    if len(payload) < _IR.size:
        raise DamagedRecord(f"{where}: record of {len(payload)} bytes is shorter than its 24-byte "
                            "header")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    end = _IR.size + 4 * flag
    if len(payload) < end:
        raise DamagedRecord(f"{where}: header announces {flag} labels but the record holds "
                            f"{len(payload)} bytes")
    labels = (np.frombuffer(payload, "<f4", flag, _IR.size) if flag
              else np.array([label], np.float32))
    return RecordHeader(flag, labels.astype(np.float32), id_, id2), payload[end:]


def label_int(value: float, where: str) -> int:
    """A float label as the class number it stands for; FacelabError naming `where` if it is not a
    non-negative integer."""
    if not (value >= 0 and float(value).is_integer()):
        raise FacelabError(f"{where}: label {value} is not a non-negative integer")
    return int(value)
