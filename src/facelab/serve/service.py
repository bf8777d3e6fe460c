"""What the endpoints share: the Recognizer behind the batcher, the gallery on its own thread,
and the limits of one request.

The gallery's SQLite connection belongs to the thread that opened it (Gallery's docstring), so
one Gallery is opened on one dedicated thread at start and every gallery operation runs there:
reads and writes are serialised by that thread, and the event loop only awaits them.
"""

import asyncio
import io
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from facelab.align.detect import Face
from facelab.errors import FacelabError
from facelab.recognize.gallery import Gallery
from facelab.recognize.photos import load_photo
from facelab.recognize.recognizer import Recognizer
from facelab.serve.batcher import Batcher
from facelab.serve.errors import ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may ask: bytes uploaded (all its photos together), pixels of one photo
    (a small PNG can declare a huge canvas), and how photos are batched (batcher.Batcher)."""

    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_batch: int = 16
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        checks = {"max_upload_mb": self.max_upload_mb > 0, "max_pixels": self.max_pixels >= 1,
                  "max_batch": self.max_batch >= 1, "max_wait_ms": self.max_wait_ms >= 0}
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (ok and math.isfinite(value)):
                raise FacelabError(f"--{name.replace('_', '-')}: {value} is invalid (must be "
                                   f"{'>= 0' if name == 'max_wait_ms' else '> 0'})")

    @property
    def max_upload(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_upload_mb * 2**20)


class Service:
    """The Recognizer, its Batcher and the Gallery of one running app (module docstring)."""

    def __init__(self, recognizer: Recognizer, gallery_dir: str | Path, limits: Limits) -> None:
        self.recognizer, self.limits = recognizer, limits
        self.gallery_dir = Path(gallery_dir)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="facelab-gallery")
        try:
            self._gallery = self._thread.submit(
                Gallery.open, self.gallery_dir, recognizer.fingerprint, True).result()
        except BaseException:
            self._thread.shutdown()
            raise
        self.batcher = Batcher(recognizer, limits.max_batch, limits.max_wait_ms)

    async def faces(self, photos: list[np.ndarray]) -> list[list[Face]]:
        """The faces of each photo, embedded by the batcher; the event loop only waits."""
        futures = [self.batcher.submit(p) for p in photos]
        return [await asyncio.wrap_future(f) for f in futures]

    async def gallery(self, job: Callable[..., Any], *args: Any) -> Any:
        """job(gallery, *args) on the gallery's thread. Its FacelabError (the database failed:
        a full disk, a lock held too long) is the server's fault, not the request's: 500."""
        try:
            return await asyncio.wrap_future(self._thread.submit(job, self._gallery, *args))
        except FacelabError as e:
            log.error("gallery: %s", e)
            raise ApiError(500, f"gallery: {e}") from None

    def threshold(self) -> float:
        """The decision threshold; 503 when the model has none (a setting of the server)."""
        if self.recognizer.threshold is None:
            raise ApiError(503, "the model stores no verification threshold; the server must be "
                           "started with --threshold T")
        return self.recognizer.threshold

    async def decode(self, field: str, data: bytes) -> np.ndarray:
        """The upload as RGB uint8 [H, W, 3], decoded on a worker thread."""
        return await run_in_threadpool(_decode, field, bytes(data), self.limits.max_pixels)

    def close(self) -> None:
        """Finish the queued photos, then close the gallery; idempotent."""
        self.batcher.close()
        if self._gallery is not None:
            self._thread.submit(self._gallery.close).result()
            self._gallery = None
        self._thread.shutdown()


def _decode(field: str, data: bytes, max_pixels: int) -> np.ndarray:
    """Photo bytes -> RGB; 400 when they are no image, 413 past `max_pixels`, checked on the
    header before the pixels are decoded."""
    if not data:
        raise ApiError(400, f"{field}: empty upload, not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"{field}: more pixels than any photo has") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(400, f"{field}: not an image (JPEG, PNG, WebP, BMP, ...)") from None
    if width * height > max_pixels:
        raise ApiError(413, f"{field}: {width}x{height} pixels, more than the limit of "
                       f"{max_pixels / 1e6:g} megapixels")
    try:
        return load_photo(data, field)
    except FacelabError as e:
        log.debug("%s: %s", field, e)
        raise ApiError(400, f"{field}: not an image that can be decoded") from None
