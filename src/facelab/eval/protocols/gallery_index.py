"""A searchable gallery of L2-normalised features: a FAISS index (exact or IVF) or numpy.

Scores are inner products of L2-normalised features, i.e. cosines. Index kinds:

- "exact": faiss.IndexFlatIP, brute force; the results are those of a numpy matrix product (ties
  aside).
- "ivf": faiss.IndexIVFFlat with inner product (Jegou et al., "Product quantization for nearest
  neighbor search", TPAMI 2011, the inverted file part): k-means with `nlist` cells trained on the
  gallery, each query scans its `nprobe` nearest cells. Approximate: a mate outside the probed
  cells is missed.
- "numpy": brute force with numpy, used when faiss cannot be imported (logged) or when asked for.

The 1:N metrics of a search in an index: protocols/search.py.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.io import write_atomic

log = logging.getLogger(__name__)

KINDS = ("exact", "ivf", "numpy")
NORM_TOL = 1e-2  # |‖x‖ - 1| allowed for an L2-normalised feature (float16 round trips included)
_INDEX_FILE, _META_FILE = "index.faiss", "ids.npz"


def _import_faiss():
    """The faiss module, or None when it is not importable.

    An optional dependency, hence imported here, inside a function. faiss's loader logs at INFO
    which CPU build it tries and loads ("Loading faiss with AVX512 support.", failed attempts
    included): nothing the user can act on, so its logger is kept to warnings and errors (a real
    loading problem still shows). The one place facelab imports faiss.
    """
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def check_features(feats: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """Finite, L2-normalised float32 C-contiguous [n, d], n >= 1 (and d == dim when given)."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) == 0 or feats.shape[1] == 0:
        raise FacelabError(
            f"1:N search: {what} features must be a non-empty [n, d] array, got {feats.shape}"
        )
    if dim is not None and feats.shape[1] != dim:
        raise FacelabError(f"1:N search: {what} feature dim {feats.shape[1]} != gallery dim {dim}")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if not np.isfinite(feats).all():
        raise FacelabError(f"1:N search: {what} features contain NaN or inf")
    norms = np.linalg.norm(feats, axis=1)  # [n]
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOL)
    if len(bad):
        raise FacelabError(
            f"1:N search: {what} features must be L2-normalised, "
            f"row {bad[0]} has norm {norms[bad[0]]:.4g}"
        )
    return feats


def check_ids(ids: np.ndarray, n: int, what: str) -> np.ndarray:
    """One id per feature row [n] (object arrays as str)."""
    ids = np.asarray(ids)
    if ids.dtype.kind == "O":
        ids = ids.astype(str)
    if ids.shape != (n,):
        raise FacelabError(
            f"1:N search: {what} ids must be [{n}] (one per feature row), got {ids.shape}"
        )
    return ids


def _default_nlist(n: int) -> int:
    """About 4 sqrt(N) cells, >= 39 training points per cell (faiss's k-means minimum), >= 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _topk_numpy(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product, best first: (float32 [M, k], int64 [M, k])."""
    scores = np.empty((len(queries), k), dtype=np.float32)
    index = np.empty((len(queries), k), dtype=np.int64)
    block = max(1, (1 << 24) // len(gallery))
    for s in range(0, len(queries), block):
        sim = queries[s : s + block] @ gallery.T  # [b, N]
        if k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # [b, k] unordered
        else:
            part = np.tile(np.arange(k), (len(sim), 1))
        top = np.take_along_axis(sim, part, 1)  # [b, k]
        order = np.argsort(-top, axis=1, kind="stable")
        index[s : s + block] = np.take_along_axis(part, order, 1)
        scores[s : s + block] = np.take_along_axis(top, order, 1)
    return scores, index


class GalleryIndex:
    """Searchable gallery of L2-normalised features [N, d] float32 with one id per row.

    kind "exact" / "ivf" need faiss; without it they fall back to "numpy" (exact) with a warning.
    `nlist` (IVF cells, default ~4 sqrt(N)) and `nprobe` (cells scanned per query) apply to "ivf"
    only.
    """

    def __init__(
        self,
        feats: np.ndarray,
        ids: np.ndarray,
        kind: str = "exact",
        nlist: int | None = None,
        nprobe: int = 8,
    ) -> None:
        if kind not in KINDS:
            raise FacelabError(f"1:N search: index kind must be one of {KINDS}, got {kind!r}")
        feats = check_features(feats, "gallery")
        self.ids = check_ids(ids, len(feats), "gallery")
        self.dim = feats.shape[1]
        self.nprobe = int(nprobe)
        faiss = _import_faiss() if kind != "numpy" else None
        if kind != "numpy" and faiss is None:
            log.warning(
                "faiss is not importable: exact numpy search instead of index kind %r", kind
            )
            kind = "numpy"
        self.kind = kind
        self._feats = feats if kind == "numpy" else None
        self._index = None if kind == "numpy" else self._build_faiss(faiss, feats, nlist)

    def _build_faiss(self, faiss, feats: np.ndarray, nlist: int | None):
        if self.kind == "exact":
            index = faiss.IndexFlatIP(self.dim)
        else:
            nlist = _default_nlist(len(feats)) if nlist is None else int(nlist)
            if not 1 <= nlist <= len(feats):
                raise FacelabError(f"1:N search: nlist must be in [1, {len(feats)}], got {nlist}")
            if self.nprobe < 1:
                raise FacelabError(f"1:N search: nprobe must be >= 1, got {self.nprobe}")
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(feats)
            index.nprobe = self.nprobe
            index.make_direct_map()  # lets features() reconstruct rows
        index.add(feats)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def features(self) -> np.ndarray:
        """The gallery features float32 [N, d] as stored in the index."""
        return self._feats if self._index is None else self._index.reconstruct_n(0, len(self))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery rows per query, best first: (scores float32 [M, k'], row indices int64 [M,
        k']).

        k' = min(k, N). IVF may return fewer than k' candidates for a query: the missing ones have
        index -1 and score -inf. `self.ids[indices]` gives identities (where indices >= 0).
        """
        queries = check_features(queries, "query", self.dim)
        if int(k) < 1:
            raise FacelabError(f"1:N search: k must be >= 1, got {k}")
        k = min(int(k), len(self))
        if self._index is None:
            return _topk_numpy(self._feats, queries, k)
        scores, index = self._index.search(queries, k)
        scores[index < 0] = -np.inf
        return scores, index.astype(np.int64)

    def save(self, path: str | Path) -> None:
        """Write folder `path` atomically: index.faiss (faiss.write_index; not for "numpy") and
        ids.npz."""
        path = Path(path)
        meta = {"ids": self.ids, "kind": np.array(self.kind), "dim": np.array(self.dim)}
        if self._index is None:
            meta["feats"] = self._feats
        else:
            faiss = _import_faiss()
            write_atomic(path / _INDEX_FILE, lambda tmp: faiss.write_index(self._index, str(tmp)))

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **meta)

        write_atomic(path / _META_FILE, write_npz)

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """Inverse of `save`."""
        path = Path(path)
        try:
            with np.load(path / _META_FILE, allow_pickle=False) as z:
                meta = {key: z[key] for key in z.files}
        except (OSError, ValueError) as e:
            raise FacelabError(
                f"{path / _META_FILE}: cannot read gallery index ids ({e})"
            ) from None
        self = cls.__new__(cls)
        self.ids, self.kind, self.dim = meta["ids"], str(meta["kind"]), int(meta["dim"])
        self._feats = self._index = None
        if self.kind == "numpy":
            self._feats = meta["feats"]
        else:
            faiss = _import_faiss()
            if faiss is None:
                raise FacelabError(
                    f"{path}: a {self.kind!r} index needs faiss (pip install faiss-cpu)"
                )
            try:
                self._index = faiss.read_index(str(path / _INDEX_FILE))
            except RuntimeError as e:
                raise FacelabError(f"{path / _INDEX_FILE}: cannot read faiss index ({e})") from None
            if self._index.ntotal != len(self.ids) or self._index.d != self.dim:
                shape = f"{self._index.ntotal} x {self._index.d}"
                raise FacelabError(
                    f"{path}: index.faiss holds {shape}, ids.npz {len(self.ids)} x {self.dim}"
                )
        self.nprobe = int(getattr(self._index, "nprobe", 0)) if self.kind == "ivf" else 8
        return self
