"""Small file helpers shared by every writer: atomic writes, image decode/encode."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facelab.errors import FacelabError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    A crash leaves the old file (or none), never a half-written one. The file gets the permissions an
    ordinary new file would (0666 minus the umask; mkstemp alone would leave it private, 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:  # the data reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def write_skipped(path: Path, key: str, rows: list[tuple[object, str]]) -> None:
    """`skipped.csv`: a `<key>,reason` header and one row per skipped item, commas in reasons turned into ';'
    (atomic, like every file facelab writes). Shared by `facelab align` (key image) and `convert` (offset)."""
    text = "".join(f"{k},{reason.replace(',', ';')}\n" for k, reason in rows)
    write_atomic(path, lambda tmp: tmp.write_text(f"{key},reason\n" + text))

def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes (JPEG/PNG/...) -> RGB uint8 [H, W, 3]; FacelabError naming `where` if undecodable."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise FacelabError(f"{where}: cannot decode image bytes")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Image file -> RGB uint8 [H, W, 3]."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FacelabError(f"{path}: cannot read image ({e.strerror})") from None
    return decode_image(data, str(path))


def encode_image(image: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """RGB uint8 [H, W, 3] -> encoded bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise FacelabError(f"cannot encode image of shape {image.shape} as {ext}")
    return buf.tobytes()
