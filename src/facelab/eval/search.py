"""1:N search over a gallery with a FAISS index (exact or IVF), plus its rank-k and open-set metrics.

Scores are inner products of L2-normalised features, i.e. cosines. Index kinds:

- "exact": faiss.IndexFlatIP, brute force; the results are those of a numpy matrix product (ties aside).
- "ivf": faiss.IndexIVFFlat with inner product (Jegou et al., "Product quantization for nearest neighbor
  search", TPAMI 2011, the inverted file part): k-means with `nlist` cells trained on the gallery, each
  query scans its `nprobe` nearest cells. Approximate: a mate outside the probed cells is missed.
- "numpy": brute force with numpy, used when faiss cannot be imported (logged) or when asked for.

Metrics follow `facelab.eval.identification` (CMC rank-k, TPIR at FPIR; see its docstring). For an exact
index and a small gallery, `evaluate_search` calls `identification.search` on the full score matrix. Otherwise
it reads the index's top-K candidates (K = max rank): the rank of the best mate is exact when the mate is
among them and "> K" otherwise, so every CMC rank <= K and the TPIR (which only needs the top-1) are exact
for an exact index (ties at the K-th score aside) and are the index's own results for IVF.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.eval import identification
from facelab.eval.identification import identification_metrics
from facelab.io import write_atomic

log = logging.getLogger(__name__)

KINDS = ("exact", "ivf", "numpy")
NORM_TOL = 1e-2  # |‖x‖ - 1| allowed for a feature called L2-normalised (float16 round trips included)
_INDEX_FILE, _META_FILE = "index.faiss", "ids.npz"


def _import_faiss():
    """The faiss module, or None when it is not importable.

    faiss's loader logs at INFO which CPU build it tries and loads ("Loading faiss with AVX512
    support.", failed attempts included): nothing the user can act on, so its logger is kept to
    warnings and errors (a real loading problem still shows). The one place facelab imports faiss.
    """
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _check_feats(feats: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """Finite, L2-normalised float32 C-contiguous [n, d], n >= 1 (and d == dim when given)."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) == 0 or feats.shape[1] == 0:
        raise FacelabError(f"1:N search: {what} features must be a non-empty [n, d] array, got {feats.shape}")
    if dim is not None and feats.shape[1] != dim:
        raise FacelabError(f"1:N search: {what} feature dim {feats.shape[1]} != gallery dim {dim}")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if not np.isfinite(feats).all():
        raise FacelabError(f"1:N search: {what} features contain NaN or inf")
    norms = np.linalg.norm(feats, axis=1)  # [n]
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOL)
    if len(bad):
        raise FacelabError(
            f"1:N search: {what} features must be L2-normalised, row {bad[0]} has norm {norms[bad[0]]:.4g}"
        )
    return feats


def _check_ids(ids: np.ndarray, n: int, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind == "O":
        ids = ids.astype(str)
    if ids.shape != (n,):
        raise FacelabError(f"1:N search: {what} ids must be [{n}] (one per feature row), got {ids.shape}")
    return ids


def identity_templates(feats: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One template per identity: mean feature, L2-normalised -> (float32 [U, d], sorted unique ids [U])."""
    feats = _check_feats(feats, "template")
    ids = _check_ids(ids, len(feats), "template")
    uniq, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(uniq), feats.shape[1]), dtype=np.float64)  # [U, d]
    np.add.at(sums, inverse, feats)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)  # [U, 1]
    if (norms == 0).any():
        zero = uniq[np.flatnonzero(norms[:, 0] == 0)[0]]
        raise FacelabError(f"1:N search: the features of identity {zero!r} sum to zero")
    return (sums / norms).astype(np.float32), uniq


def _default_nlist(n: int) -> int:
    """About 4 sqrt(N) cells, at least 39 training points per cell (faiss's k-means minimum), at least 1."""
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
    `nlist` (IVF cells, default ~4 sqrt(N)) and `nprobe` (cells scanned per query) apply to "ivf" only.
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
        feats = _check_feats(feats, "gallery")
        self.ids = _check_ids(ids, len(feats), "gallery")
        self.dim = feats.shape[1]
        self.nprobe = int(nprobe)
        faiss = _import_faiss() if kind != "numpy" else None
        if kind != "numpy" and faiss is None:
            log.warning("faiss is not importable: exact numpy search instead of index kind %r", kind)
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
        """Top-k gallery rows per query, best first: (scores float32 [M, k'], row indices int64 [M, k']).

        k' = min(k, N). IVF may return fewer than k' candidates for a query: the missing ones have index
        -1 and score -inf. `self.ids[indices]` gives identities (where indices >= 0).
        """
        queries = _check_feats(queries, "query", self.dim)
        if int(k) < 1:
            raise FacelabError(f"1:N search: k must be >= 1, got {k}")
        k = min(int(k), len(self))
        if self._index is None:
            return _topk_numpy(self._feats, queries, k)
        scores, index = self._index.search(queries, k)
        scores[index < 0] = -np.inf
        return scores, index.astype(np.int64)

    def save(self, path: str | Path) -> None:
        """Write folder `path`: index.faiss (faiss.write_index; not for "numpy") and ids.npz, atomically."""
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
            raise FacelabError(f"{path / _META_FILE}: cannot read gallery index ids ({e})") from None
        self = cls.__new__(cls)
        self.ids, self.kind, self.dim = meta["ids"], str(meta["kind"]), int(meta["dim"])
        self._feats = self._index = None
        if self.kind == "numpy":
            self._feats = meta["feats"]
        else:
            faiss = _import_faiss()
            if faiss is None:
                raise FacelabError(f"{path}: a {self.kind!r} index needs faiss (pip install faiss-cpu)")
            try:
                self._index = faiss.read_index(str(path / _INDEX_FILE))
            except RuntimeError as e:
                raise FacelabError(f"{path / _INDEX_FILE}: cannot read faiss index ({e})") from None
            if self._index.ntotal != len(self.ids) or self._index.d != self.dim:
                shape = f"{self._index.ntotal} x {self._index.d}"
                raise FacelabError(f"{path}: index.faiss holds {shape}, ids.npz {len(self.ids)} x {self.dim}")
        self.nprobe = int(getattr(self._index, "nprobe", 0)) if self.kind == "ivf" else 8
        return self


def _ranks_from_topk(top_ids: np.ndarray, top_scores: np.ndarray, probe_ids: np.ndarray) -> tuple:
    """From top-K lists: (best mate score or -inf [P], its rank, K + 1 when absent [P])."""
    valid = top_scores > -np.inf  # IVF may return fewer than K candidates
    is_mate = (top_ids == probe_ids[:, None]) & valid  # [P, K]
    found = is_mate.any(1)
    first = is_mate.argmax(1)  # the lists are sorted, so the first mate is the best one
    mate = np.where(found, top_scores[np.arange(len(top_ids)), first], -np.inf)  # [P]
    rank = 1 + ((~is_mate) & valid & (top_scores >= mate[:, None])).sum(1)  # ties count against the probe
    return mate, np.where(found, rank, top_ids.shape[1] + 1)


def _metrics_from_topk(index: GalleryIndex, probes: np.ndarray, probe_ids: np.ndarray, ranks, fpirs) -> dict:
    """identification.search's dict, computed from the index's top-max(ranks) candidates."""
    scores, rows = index.search(probes, max(ranks))  # [P, K]
    top_ids = index.ids[np.maximum(rows, 0)]  # [P, K]; rows -1 have score -inf and are masked out
    mate, rank = _ranks_from_topk(top_ids, scores, probe_ids)
    top = scores[:, 0].astype(np.float64)
    mated = np.isin(probe_ids, index.ids)
    return identification_metrics(mate, rank, top, mated, len(index), ranks, fpirs)


def evaluate_search(
    index: GalleryIndex,
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    full_limit: int = 1 << 26,
) -> dict:
    """CMC rank-k and TPIR@FPIR of probes [P, d] searched in `index`; the dict of `identification.search`.

    Exact and numpy indexes with P * N <= full_limit use the full score matrix (identification.search);
    otherwise the index's top-max(ranks) candidates (see the module docstring for what is exact).
    "scoring" in the result says which: "full" or "top-k".
    """
    probes = _check_feats(probe_feats, "probe", index.dim)
    probe_ids = _check_ids(probe_ids, len(probes), "probe")
    if not ranks or min(ranks) < 1:
        raise FacelabError(f"1:N search: ranks must be integers >= 1, got {tuple(ranks)}")
    if index.kind != "ivf" and len(probes) * len(index) <= full_limit:
        result = identification.search(probes, probe_ids, index.features(), index.ids, ranks, fpirs)
        return {**result, "index": index.kind, "scoring": "full"}
    result = _metrics_from_topk(index, probes, probe_ids, list(ranks), fpirs)
    return {**result, "index": index.kind, "scoring": "top-k"}


def _embed_folder(model, preprocess: dict, root: Path, batch=256) -> tuple[np.ndarray, np.ndarray, list]:
    """(embeddings float32 [N, d], identity name per image [N], image paths) of `root/<identity>/<image>`."""
    from facelab.data.folder import ImageFolderDataset
    from facelab.eval.embed import embed_images

    ds = ImageFolderDataset(root)
    chunks = []
    for s in range(0, len(ds), batch):
        images = np.stack([ds[i][0].permute(1, 2, 0).numpy() for i in range(s, min(s + batch, len(ds)))])
        chunks.append(embed_images(model, images, batch_size=batch, preprocess=preprocess))  # [b, d]
    names = np.array(ds.classes)[ds.labels]
    return np.concatenate(chunks), names, [p for p, _ in ds.samples]


def search_folders(
    checkpoint: str | Path,
    gallery_dir: str | Path,
    probes_dir: str | Path,
    out: str | Path,
    index_kind: str = "exact",
    k: int = 10,
    allow_mismatch: Sequence[str] = (),
) -> dict:
    """Embed two image folders (one sub-folder per identity, aligned crops) with a checkpoint, search.

    The gallery holds one template per identity (identity_templates); each probe image is a search, mated
    when its folder name is a gallery identity. Writes out/metrics.json (evaluate_search at ranks 1, 5, k)
    and out/candidates.json (each probe's top-k identities and scores), plus cmc.png and index.html (ranks
    1..k, from the top-k lists). Both folders are first checked against the model's preprocessing (their
    align.json; facelab.eval.metadata): a mismatch is refused unless its field is in allow_mismatch (or "all").
    `out` is proven writable before the model is loaded. Returns the metrics.
    """
    from facelab.eval.metadata import check_all, describe_folder
    from facelab.eval.pages import write_search_page
    from facelab.eval.plots import cmc_from_ranks
    from facelab.io import check_output_folder
    from facelab.jsonfile import write_json_atomic
    from facelab.train.task import load_model

    if int(k) < 1:
        raise FacelabError(f"facelab search: --k must be >= 1, got {k}")
    out = check_output_folder(Path(out))
    model, preprocess = load_model(checkpoint)
    described = {"gallery": describe_folder(Path(gallery_dir)), "probes": describe_folder(Path(probes_dir))}
    checks = check_all(preprocess, described, allow_mismatch)
    gallery, gallery_names, _ = _embed_folder(model, preprocess, Path(gallery_dir))
    probes, probe_names, probe_paths = _embed_folder(model, preprocess, Path(probes_dir))
    index = GalleryIndex(*identity_templates(gallery, gallery_names), kind=index_kind)
    metrics = evaluate_search(index, probes, probe_names, ranks=sorted({1, min(5, k), k}))
    metrics.update(checkpoint=str(checkpoint), gallery_dir=str(gallery_dir), probes_dir=str(probes_dir))
    metrics["data_checks"] = checks
    scores, rows = index.search(probes, k)
    names = index.ids[np.maximum(rows, 0)]  # [P, k]; rows -1 (IVF misses) have score -inf
    _, rank = _ranks_from_topk(names, scores, probe_names)  # [P]; k' + 1 when the mate is not in the list
    mated = np.isin(probe_names, index.ids)
    curve = cmc_from_ranks(rank[mated], scores.shape[1]) if mated.any() else None
    if curve is not None:
        metrics["cmc_curve"] = curve
    candidates = []
    for p in range(len(probes)):
        top = [[str(n), float(v)] for n, v in zip(names[p], scores[p], strict=True) if v > -np.inf]
        candidates.append({"probe": str(probe_paths[p]), "identity": str(probe_names[p]), "candidates": top})
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(out / "candidates.json", candidates)
    write_search_page(out, metrics, curve)
    log.info("1:N search: %d probes, %d identities, rank-1 %s", len(probes), len(index), metrics["cmc"]["1"])
    return metrics
