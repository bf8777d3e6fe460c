"""Write image records as an insightface RecordIO set: `.rec`, `.idx` and `property`.

The layout is the one RecordIODataset reads (facelab.data.recordio.dataset): a header record
(key 0) with labels (a, b), the images sorted by label (keys 1..a-1), then one record per identity
(keys a..b-1) holding its image range. Encoded image bytes are copied as given, never re-encoded.
"""

import itertools
import logging
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from facelab.data.property import property_text
from facelab.data.recordio.framing import pack_record
from facelab.data.recordio.header import pack_image
from facelab.errors import FacelabError
from facelab.io import follow_umask, fsync_file, remove_stale_temps, temp_beside, write_atomic

log = logging.getLogger(__package__)  # facelab.data.recordio: one logger for the format

_MAX_EXACT = 1 << 24  # float32 labels hold integers exactly up to here


def write_recordio(out_dir: Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                   image_size: int | tuple[int, int]) -> None:
    """Write `train.rec`, `train.idx`, `property` in the insightface layout (see module
    docstring)."""
    out_dir = Path(out_dir)
    write_rec_files(out_dir / "train.rec", out_dir / "train.idx", out_dir / "property", samples,
                    num_classes, image_size)


def write_rec_files(rec: Path, idx: Path, prop: Path, samples: Iterable[tuple[int, bytes]],
                    num_classes: int, image_size: int | tuple[int, int]) -> None:
    """`write_recordio` with explicit file names. Images are stored sorted by label (stable), so
    each identity's range is contiguous; the encoded bytes are copied as given. Two passes (the
    images go to a scratch file first), so memory stays small. Atomic: temporary files are renamed
    into place (`.rec`, `.idx`, then `property` last; an old `property` is removed first), with the
    user's umask; scratch files a killed writer left in the folder are removed first."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if num_classes < 1 or len(size) != 2 or min(size) < 1:
        raise FacelabError(f"num_classes {num_classes} and image size {image_size} must be "
                           "positive")
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
        write_atomic(prop, lambda p: p.write_text(property_text(num_classes, size)))
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)
    log.info("wrote %s: %d images, %d identities", rec, len(labels), num_classes)


def _write_blob(blob: BinaryIO, samples: Iterable[tuple[int, bytes]],
                num_classes: int) -> tuple[np.ndarray, list]:
    """Pass 1: encoded images back to back in input order. Returns (labels [N],
    [(offset, length)])."""
    labels, spans, pos = [], [], 0
    for i, (label, data) in enumerate(samples):
        if not isinstance(label, int | np.integer) or not 0 <= label < num_classes:
            raise FacelabError(f"sample {i}: label {label!r} is not an integer in "
                               f"[0, {num_classes})")
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
        raise FacelabError(f"{len(labels)} images + {num_classes} identities exceed the 2^24 "
                           "records that float32 header labels can number exactly")
    return np.asarray(labels, dtype=np.int64), spans


def _write_sorted(blob_path: Path, out_path: Path, labels: np.ndarray, spans: list,
                  num_classes: int) -> list[int]:
    """Pass 2: header (key 0), images sorted by label (keys 1..a-1), identities (keys a..b-1) ->
    out_path. Returns the byte offset of every key."""
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
            identities = ((a + c, (int(bounds[c]), int(bounds[c + 1])), b"")
                          for c in range(num_classes))
            for key, label, image in itertools.chain([(0, (a, b), b"")], images, identities):
                framed = pack_record(pack_image(label, image, id=key))
                out.write(framed)
                offsets.append(pos)
                pos += len(framed)
        finally:
            blob.close()
    return offsets
