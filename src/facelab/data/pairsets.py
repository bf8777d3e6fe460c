"""Verification pair sets in the insightface `.bin` format, and their preprocessing sidecar.

A `.bin` is a pickle of `(list of encoded images, list of bool)`; image 2i and 2i+1 form pair i.
Pickle can run code, so it is read with a restricted unpickler that admits only what the format
needs (bytes, lists, tuples, bools and, for files written with NumPy, uint8/bool arrays); anything
else is refused.

The sidecar `<set>.json` beside a `.bin` declares the set's preprocessing (any of FIELDS: template,
size, colour, mean, std; other keys are kept as information), which
facelab.eval.checks.metadata compares with a model's before evaluating it on the set.
"""

import io
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from facelab.data.transforms import check_preprocess
from facelab.errors import FacelabError
from facelab.io import decode_image, encode_image, write_atomic
from facelab.jsonfile import write_json_atomic

FIELDS = ("template", "size", "colour", "mean", "std")  # the preprocessing a sidecar may declare

# (module, name) pairs a .bin may reference. _codecs.encode: bytes pickled by Python 3 with
# protocol 2; numpy's reconstruct/ndarray/dtype: files whose lists hold arrays instead of bytes.
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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError) as e:
        raise FacelabError(f"{path}: not a valid .bin pair set ({e})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise FacelabError(f"{path}: expected a pickled (images, issame) pair, got "
                           f"{type(obj).__name__}")
    bins, issame = obj
    same = np.asarray(list(issame))
    if same.ndim != 1 or not (same.dtype == np.bool_ or np.isin(same, [0, 1]).all()):
        raise FacelabError(f"{path}: issame list must hold booleans")
    if len(bins) != 2 * len(same):
        raise FacelabError(f"{path}: {len(bins)} images for {len(same)} pairs "
                           f"(expected {2 * len(same)})")
    images = [decode_image(_as_bytes(b, i, path), f"{path}: image {i}")
              for i, b in enumerate(bins)]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise FacelabError(f"{path}: images have different sizes {sorted(shapes)}")
    return np.stack(images), same.astype(bool)


def write_bin(path: Path, images: Sequence[np.ndarray], same: Sequence[bool], quality: int = 95,
              meta: dict | None = None) -> None:
    """Write a `.bin` pair set (JPEG-encoded RGB images, pairs interleaved), atomically.

    meta: also write the sidecar `<set>.json` declaring the set's preprocessing (write_sidecar),
    read by `facelab.eval.checks.metadata.describe_bin`.
    """
    if len(images) != 2 * len(same):
        raise FacelabError(f"{path}: {len(images)} images for {len(same)} pairs "
                           f"(expected {2 * len(same)})")
    if meta is not None:
        write_sidecar(Path(path), meta)
    bins = [encode_image(np.ascontiguousarray(im), ".jpg", quality) for im in images]
    payload = pickle.dumps((bins, [bool(s) for s in same]), protocol=4)
    write_atomic(Path(path), lambda tmp: tmp.write_bytes(payload))


# ---------------------------------------------------------------- sidecar


def sidecar_path(bin_path: Path) -> Path:
    """`<set>.json` next to `<set>.bin`."""
    return Path(bin_path).with_suffix(".json")


def check_declared(declared: Mapping, where: str) -> dict:
    """The preprocessing fields of a declaration (other keys are kept out), values validated."""
    fields = {k: declared[k] for k in FIELDS if k in declared}
    try:
        check_preprocess(fields)
    except FacelabError as e:
        raise FacelabError(f"{where}: {e}") from None
    size = fields.get("size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FacelabError(f"{where}: size must be a positive integer, got {fields['size']!r}")
    return fields


def write_sidecar(bin_path: Path, meta: Mapping) -> None:
    """Write `<set>.json` next to a `.bin` (atomically) after checking its preprocessing fields."""
    side = sidecar_path(bin_path)
    check_declared(meta, str(side))
    write_json_atomic(side, dict(meta))
