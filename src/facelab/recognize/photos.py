"""A photo as the user hands it over -> RGB uint8 [H, W, 3], upright.

Accepted: a path (str or Path), encoded bytes (JPEG, PNG, WebP, BMP, ...), a numpy uint8 array
([H, W] grayscale, [H, W, 1], [H, W, 3] RGB or [H, W, 4] RGBA) or a PIL image. Files and bytes are
decoded by Pillow, whose `ImageOps.exif_transpose` applies the EXIF orientation a camera records
instead of rotating the pixels (a portrait shot stored sideways would otherwise reach the detector
lying on its side). Transparent pixels are composited over white, 16-bit images scaled to 8 bits.
Anything else is a FacelabError naming the photo.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facelab.errors import FacelabError
from facelab.io import read_image_bytes

Photo = str | Path | bytes | np.ndarray | Image.Image


def photo_name(photo: Photo, index: int) -> str:
    """How messages name a photo: its path, else its place in the call (`photo 2`)."""
    return str(photo) if isinstance(photo, (str, Path)) else f"photo {index + 1}"


def load_photo(photo: Photo, where: str | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of any accepted photo (module docstring); `where` names it in errors."""
    where = where or photo_name(photo, 0)
    if isinstance(photo, (str, Path)):
        return _decode(read_image_bytes(Path(photo)), where)
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return _decode(bytes(photo), where)
    if isinstance(photo, Image.Image):
        return _from_pil(ImageOps.exif_transpose(photo), where)
    if isinstance(photo, np.ndarray):
        return _from_array(photo, where)
    raise FacelabError(f"{where}: a photo must be a path, bytes, a numpy uint8 array or a PIL "
                       f"image, got {type(photo).__name__}")


def _decode(data: bytes, where: str) -> np.ndarray:
    if len(data) == 0:
        raise FacelabError(f"{where}: empty file (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes now: a truncated or corrupt file fails here, inside the try
            return _from_pil(ImageOps.exif_transpose(image), where)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise FacelabError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from None


def _from_pil(image: Image.Image, where: str) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit scans and PNGs
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        return _from_array(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), where)
    if image.mode == "F":
        raise FacelabError(f"{where}: floating-point images are not photos (mode F)")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return _from_array(np.array(image.convert("RGBA")), where)
    return np.array(image.convert("RGB"))  # a writable copy (asarray of PIL is read-only)


def _from_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise FacelabError(f"{where}: a photo array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) == 0:
        raise FacelabError(f"{where}: a photo array must be [H, W], [H, W, 1], [H, W, 3] (RGB) "
                           f"or [H, W, 4] (RGBA), got {array.shape}")
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if array.shape[2] == 4:  # over white: alpha-weighted mean of colour and 255
        alpha = array[:, :, 3:].astype(np.float32) / 255.0  # [H, W, 1]
        rgb = array[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)
