"""Verification pair sets in the insightface `.bin` format.

A `.bin` is a pickle of `(list of encoded images, list of bool)`; image 2i and 2i+1 form pair i.
Pickle can run code, so it is read with a restricted unpickler that admits only what the format needs
(bytes, lists, tuples, bools and, for files written with NumPy, uint8/bool arrays); anything else is refused.
"""

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.io import decode_image, encode_image, write_atomic

# (module, name) pairs a .bin may reference. _codecs.encode: bytes pickled by Python 3 with protocol 2;
# numpy's reconstruct/ndarray/dtype: files whose lists hold arrays instead of bytes.
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _as_bytes(item: object, i: int, path: Path) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise FacelabError(f"{path}: image entry {i} is {type(item).__name__}, expected encoded bytes")


def load_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a `.bin` pair set: (images [2N, H, W, 3] RGB uint8, same [N] bool)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FacelabError(f"{path}: cannot read pair set ({e.strerror})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise FacelabError(f"{path}: not a valid .bin pair set ({e})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise FacelabError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    same = np.asarray(list(issame))
    if same.ndim != 1 or not (same.dtype == np.bool_ or np.isin(same, [0, 1]).all()):
        raise FacelabError(f"{path}: issame list must hold booleans")
    if len(bins) != 2 * len(same):
        raise FacelabError(f"{path}: {len(bins)} images for {len(same)} pairs (expected {2 * len(same)})")
    images = [decode_image(_as_bytes(b, i, path), f"{path}: image {i}") for i, b in enumerate(bins)]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise FacelabError(f"{path}: images have different sizes {sorted(shapes)}")
    return np.stack(images), same.astype(bool)


def write_bin(
    path: Path, images: Sequence[np.ndarray], same: Sequence[bool], quality: int = 95, meta: dict | None = None
) -> None:
    """Write a `.bin` pair set (JPEG-encoded RGB images, pairs interleaved), atomically.

    meta: also write the sidecar `<set>.json` declaring the set's preprocessing (template, size, colour,
    mean, std; other keys are kept as information), read by `facelab.eval.metadata.describe_bin`.
    """
    if len(images) != 2 * len(same):
        raise FacelabError(f"{path}: {len(images)} images for {len(same)} pairs (expected {2 * len(same)})")
    if meta is not None:
        from facelab.eval.metadata import write_sidecar

        write_sidecar(Path(path), meta)
    bins = [encode_image(np.ascontiguousarray(im), ".jpg", quality) for im in images]
    payload = pickle.dumps((bins, [bool(s) for s in same]), protocol=4)
    write_atomic(Path(path), lambda tmp: tmp.write_bytes(payload))
