"""Strict image decoding: encoded bytes that decode cleanly, or the reason they do not.

The training loader decodes with OpenCV because it is fast (facelab.io.decode_image). OpenCV, like
Pillow, accepts a JPEG whose data libjpeg had to repair ("Corrupt JPEG data: N extraneous bytes
before marker 0xd9"): libjpeg prints that warning on stderr without naming the file, and the
damaged image trains silently. Here
  - JPEG is decoded by simplejpeg in strict mode (libjpeg-turbo's TJFLAG_STOPONWARNING: every
    recoverable warning, "Corrupt JPEG data", "Premature end of JPEG file", is an error returned as
    a value, so it is thread-safe, unlike capturing stderr). Its pixels are OpenCV's, which a
    preload keeps;
  - other formats go through Pillow's `verify()` (structure, PNG chunk CRCs; no decoding), then
    OpenCV, the loader's own decoder, which refuses truncated data.
An empty file, an undecodable one and a repaired one all get a reason. Damage that libjpeg itself
does not notice (its Huffman decoding may resynchronise and end where it should; JPEG has no
checksum) cannot be found by any decoder.

Used by the training-set checks (facelab.data.check) and by `facelab align` for its photos.
"""

import io

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from facelab.errors import FacelabError
from facelab.io import opencv_rgb


class NotClean(Exception):
    """Why bytes are not a clean image (the reason alone, without the file's name)."""


def image_problem(data: bytes) -> str | None:
    """Why `data` is not an image that decodes cleanly (empty, undecodable, repaired by the
    decoder), or None if it is one."""
    try:
        decode_clean(data)
    except NotClean as e:
        return str(e)
    return None


def decode_strict(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes -> RGB uint8 [H, W, 3], the pixels facelab.io.decode_image gives; FacelabError
    naming `where` and the reason if the bytes do not decode cleanly (see the module docstring)."""
    try:
        return decode_clean(data)
    except NotClean as e:
        raise FacelabError(f"{where}: {e}") from None


def decode_clean(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8 [H, W, 3]; NotClean with the reason if they do not decode
    cleanly."""
    if len(data) == 0:
        raise NotClean("empty file (0 bytes), not an image")
    if bytes(data[:2]) == b"\xff\xd8":
        return _decode_jpeg(data)
    return _decode_other(data)


def _decode_jpeg(data: bytes) -> np.ndarray:
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as e:  # libjpeg's error or warning: "Corrupt JPEG data: 64 extraneous ..."
        raise NotClean(f"damaged JPEG data: {e}") from None
    if colorspace in ("YCbCr", "Gray") and not _has_exif(data):
        return rgb
    # CMYK, or an EXIF orientation OpenCV applies: the loader's pixels
    return _opencv(data, "JPEG")


def _has_exif(data: bytes) -> bool:
    """Whether the JPEG's header segments (before the scan) hold an APP1 Exif block."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: no more header segments
            return False
        if marker == 0xE1 and bytes(data[pos + 4 : pos + 10]) == b"Exif\0\0":
            return True
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _decode_other(data: bytes) -> np.ndarray:
    kind = _kind(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # chunk structure and CRCs (PNG) without decoding
    except (UnidentifiedImageError, Image.DecompressionBombError):
        pass  # a format or a size Pillow does not take: OpenCV decides alone
    except Exception as e:  # Pillow raises SyntaxError, OSError, struct.error, ... on damage
        raise NotClean(f"damaged {kind} data: {e}") from None
    return _opencv(data, kind)


def _opencv(data: bytes, kind: str) -> np.ndarray:
    rgb = opencv_rgb(data)
    if rgb is None:
        raise NotClean(f"cannot decode {kind} data (not an image, truncated or damaged)")
    return rgb


def _kind(data: bytes) -> str:
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return "image"
