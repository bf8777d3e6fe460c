import json
import logging
import sys

import cv2
import numpy as np
import pytest
import torch
from tests.references.float_paths import DIST_TOL
from torch import nn

from facelab.errors import FacelabError
from facelab.eval import run as eval_run
from facelab.eval.protocols import identification as ident
from facelab.eval.protocols import search as S
from facelab.eval.protocols.gallery_index import GalleryIndex

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng, n_clusters, per, d=32, noise=0.3):
    """Points around random unit centres: (feats [n_clusters * per, d], cluster id of each)."""
    centres = rng.standard_normal((n_clusters, d))
    ids = np.repeat(np.arange(n_clusters), per)
    return _unit(centres[ids] + noise * rng.standard_normal((len(ids), d)) / np.sqrt(d)), ids


def _open_set(seed=0):
    """Gallery of 60 subjects x 2 images; probes: 40 mated, 20 non-mated (subjects 100..)."""
    rng = np.random.default_rng(seed)
    feats, ids = _clustered(rng, 80, 3, noise=6.0)
    gal = np.flatnonzero((ids < 60) & (np.arange(len(ids)) % 3 < 2))
    third = np.arange(len(ids)) % 3 == 2
    probes = np.concatenate([np.flatnonzero((ids < 40) & third), np.arange(180, 240, 3)])
    probe_ids = np.where(ids[probes] >= 60, ids[probes] + 40, ids[probes])
    return feats[gal], ids[gal], feats[probes], probe_ids


def _assert_no_near_ties(queries, gallery, k):
    """The rankings below are compared exactly across paths (faiss's float32 kernels, numpy's BLAS,
    float64 here): fine on these fixed data because no query's k + 1 best scores lie within float32
    rounding of each other (DIST_TOL), where two paths could order them differently."""
    s = np.sort(queries.astype(np.float64) @ gallery.T.astype(np.float64), axis=1)[:, ::-1]
    assert np.diff(-s[:, : k + 1], axis=1).min() > DIST_TOL, "near-tied scores: choose other data"


def test_exact_index_equals_brute_force():
    rng = np.random.default_rng(1)
    gallery, queries = _unit(rng.standard_normal((500, 16))), _unit(rng.standard_normal((40, 16)))
    _assert_no_near_ties(queries, gallery, 10)
    index = GalleryIndex(gallery, np.arange(500), kind="exact")
    scores, rows = index.search(queries, 10)
    sim = queries.astype(np.float64) @ gallery.T.astype(np.float64)  # [40, 500]
    truth = np.argsort(-sim, axis=1)[:, :10]
    assert rows.shape == (40, 10) and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(sim, truth, 1), atol=1e-5)
    assert index.search(queries, 999)[1].shape == (40, 500)  # k above N is clamped


def test_ivf_recall_at_1():
    rng = np.random.default_rng(2)
    gallery, _ = _clustered(rng, 64, 40, noise=10.0)  # 2560 points, loose clusters
    queries = _unit(gallery[rng.choice(len(gallery), 200)] + 0.1 * rng.standard_normal((200, 32)))
    exact = GalleryIndex(gallery, np.arange(len(gallery)), kind="exact").search(queries, 1)[1]

    def recall(nprobe):
        ivf = GalleryIndex(gallery, np.arange(len(gallery)), kind="ivf", nlist=32, nprobe=nprobe)
        assert ivf.kind == "ivf" and ivf._index.nlist == 32 and ivf._index.nprobe == nprobe
        return np.mean(ivf.search(queries, 1)[1][:, 0] == exact[:, 0])

    assert recall(1) < 0.9 and recall(8) >= 0.95  # approximate, and good with enough cells probed
    one_cell = GalleryIndex(gallery, np.arange(len(gallery)), kind="ivf", nlist=32, nprobe=1)
    scores, rows = one_cell.search(queries, 200)
    assert (rows == -1).any() and (
        (rows == -1) == (scores == -np.inf)
    ).all()  # one cell holds < 200 points
    assert (np.diff(np.where(rows >= 0, scores, -9.0), axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("kind", ["exact", "ivf", "numpy"])
def test_save_load_round_trip(tmp_path, kind):
    gallery, ids, probes, _ = _open_set()
    names = np.array([f"person_{i}" for i in ids])
    index = GalleryIndex(gallery, names, kind=kind, nlist=2, nprobe=1)
    index.save(tmp_path / "idx")
    back = GalleryIndex.load(tmp_path / "idx")
    assert back.kind == kind and back.dim == index.dim and list(back.ids) == list(names)
    for a, b in zip(index.search(probes, 5), back.search(probes, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")]


def test_load_missing_is_an_error(tmp_path):
    with pytest.raises(FacelabError, match="ids.npz"):
        GalleryIndex.load(tmp_path / "nowhere")


@pytest.mark.parametrize("full_limit", [1 << 26, 0])  # full score matrix, and top-k from the index
def test_evaluate_search_equals_identification(full_limit):
    gallery, ids, probes, probe_ids = _open_set()
    _assert_no_near_ties(probes, gallery, 10)  # the top-k path: faiss's float32 top-10 lists
    kw = {"ranks": (1, 2, 5, 10), "fpirs": (0.01, 0.1, 0.5)}
    truth = ident.search(probes, probe_ids, gallery, ids, **kw)
    assert 0 < truth["cmc"]["1"] < truth["cmc"]["10"] < 1  # the data make every metric non-trivial
    got = S.evaluate_search(
        GalleryIndex(gallery, ids), probes, probe_ids, full_limit=full_limit, **kw
    )
    assert got.pop("scoring") == ("full" if full_limit else "top-k") and got.pop("index") == "exact"
    assert _close(got, truth)


def _close(got, truth):
    assert got.keys() == truth.keys()
    for key, value in truth.items():
        if isinstance(value, dict):
            assert got[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert got[key] == value, key
    return True


def test_evaluate_search_hand_case_top_k():
    """identification's hand case (2-D unit vectors) through the top-k path, K > gallery too."""
    a = np.radians([10, 30, 100, 200, 45, -90, 130, -50])
    probes, probe_ids = (
        _unit(np.stack([np.cos(a), np.sin(a)], 1)),
        np.array([1, 2, 3, 3, 9, 8, 2, 1]),
    )
    g = np.radians([0, 90, 180])
    gallery, gallery_ids = _unit(np.stack([np.cos(g), np.sin(g)], 1)), np.array([1, 2, 3])
    kw = {"ranks": (1, 2, 5), "fpirs": (0.01, 0.5, 1.0)}
    got = S.evaluate_search(
        GalleryIndex(gallery, gallery_ids), probes, probe_ids, full_limit=0, **kw
    )
    assert got["cmc"] == {"1": 4 / 6, "2": 1.0, "5": 1.0}
    truth = ident.search(probes, probe_ids, gallery, gallery_ids, **kw)
    assert _close({k: v for k, v in got.items() if k not in ("scoring", "index")}, truth)


def test_ivf_evaluation_uses_the_index():
    gallery, ids, probes, probe_ids = _open_set()
    _assert_no_near_ties(probes, gallery, 10)  # faiss's float32 top-10 lists against float64
    got = S.evaluate_search(
        GalleryIndex(gallery, ids, kind="ivf", nlist=3, nprobe=3), probes, probe_ids
    )
    truth = ident.search(probes, probe_ids, gallery, ids)
    assert got["scoring"] == "top-k"
    assert got["cmc"] == pytest.approx(truth["cmc"])  # nprobe = nlist: exhaustive


def test_numpy_fallback_without_faiss(monkeypatch, caplog):
    gallery, ids, probes, probe_ids = _open_set()
    _assert_no_near_ties(probes, gallery, 10)  # faiss's and numpy's float32 top-k lists agree
    exact = GalleryIndex(gallery, ids, kind="exact")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="facelab.eval.protocols.gallery_index"):
        fallback = GalleryIndex(gallery, ids, kind="exact")
    assert fallback.kind == "numpy" and "faiss is not importable" in caplog.text
    (s1, r1), (s2, r2) = exact.search(probes, 7), fallback.search(probes, 7)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    a = S.evaluate_search(exact, probes, probe_ids, full_limit=0)
    b = S.evaluate_search(fallback, probes, probe_ids, full_limit=0)
    assert a.pop("index") == "exact" and b.pop("index") == "numpy" and _close(b, a)


def test_identity_templates_against_loop():
    rng = np.random.default_rng(3)
    feats, ids = (
        _unit(rng.standard_normal((9, 4))),
        np.array(["b", "a", "b", "c", "a", "b", "c", "c", "c"]),
    )
    t, tids = S.identity_templates(feats, ids)
    assert list(tids) == ["a", "b", "c"]
    for row, name in zip(t, tids, strict=True):
        mean = np.mean([f for f, i in zip(feats, ids, strict=True) if i == name], axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)


def test_bad_inputs():
    gallery, ids, probes, probe_ids = _open_set()
    index = GalleryIndex(gallery, ids)
    cases = [
        (lambda: index.search(probes[:, :8], 3), "dim 8 != gallery dim 32"),
        (lambda: S.evaluate_search(index, probes[:, :8], probe_ids), "dim 8"),
        (lambda: GalleryIndex(gallery * 2, ids), "L2-normalised, row 0"),
        (lambda: index.search(probes * 0.5, 3), "query features must be L2-normalised"),
        (lambda: GalleryIndex(np.zeros((0, 32), np.float32), ids[:0]), "non-empty"),
        (lambda: GalleryIndex(gallery, ids[:-1]), "one per feature row"),
        (lambda: GalleryIndex(gallery, ids, kind="hnsw"), "index kind"),
        (lambda: GalleryIndex(gallery, ids, kind="ivf", nlist=10**6), "nlist"),
        (lambda: index.search(probes, 0), "k must be >= 1"),
        (lambda: GalleryIndex(np.full_like(gallery, np.nan), ids), "NaN"),
    ]
    for call, message in cases:
        with pytest.raises(FacelabError, match=message):
            call()


class _MeanColour(nn.Module):
    """Toy embedder: per-channel mean and a constant, [B, 3, H, W] -> [B, 4]."""

    def forward(self, x):
        m = x.mean(dim=(2, 3))  # [B, 3]
        return torch.cat([m, torch.full_like(m[:, :1], 0.1)], 1)


def _write_folder(root, colours, n):
    rng = np.random.default_rng(len(str(root)))
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(rgb) + rng.integers(-10, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i}.png"), img[:, :, ::-1])


def test_search_folders(tmp_path, monkeypatch):
    colours = {"ann": (250, 10, 10), "bob": (10, 250, 10), "cyd": (10, 10, 250)}
    _write_folder(tmp_path / "gallery", colours, 3)
    probes = {"ann": colours["ann"], "bob": colours["bob"], "zed": (128, 128, 128)}
    _write_folder(tmp_path / "probes", probes, 2)
    # a model of 8-px crops: the folders' measured size
    monkeypatch.setattr(eval_run, "load_model",
                        lambda path: (_MeanColour(), {"colour": "RGB", "size": 8}))
    got = eval_run.search_folders(
        "ck.pt", tmp_path / "gallery", tmp_path / "probes", tmp_path / "out", "exact", k=2
    )
    assert (got["probes"], got["mated"], got["non_mated"], got["gallery"]) == (6, 4, 2, 3)
    assert got["cmc"] == {"1": 1.0, "2": 1.0}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["cmc"]["1"] == 1.0
    cands = json.loads((tmp_path / "out" / "candidates.json").read_text())
    assert [c["candidates"][0][0] for c in cands[:4]] == ["ann", "ann", "bob", "bob"]
    assert len(cands) == 6 and all(len(c["candidates"]) == 2 for c in cands)


# `facelab search` in a fresh process (faiss logs only when first imported): the toy embedder stands
# in for the model, the CLI logs at INFO as usual, and a real faiss loader warning comes last.
_FRESH_SEARCH = """
import logging, sys
import torch
from torch import nn
import facelab.eval.run as eval_run
from facelab.cli import main

class MeanColour(nn.Module):
    def forward(self, x):  # [B, 3, H, W] -> [B, 4]
        m = x.mean(dim=(2, 3))
        return torch.cat([m, torch.full_like(m[:, :1], 0.1)], 1)

eval_run.load_model = lambda path: (MeanColour(), {"colour": "RGB", "size": 8})
gallery, probes, out = sys.argv[1:4]
code = main(["search", "ck.pt", "--gallery", gallery, "--probes", probes, "--out", out, "--k", "2"])
logging.getLogger("faiss.loader").warning("a real faiss loading problem")
print("exit", code, "faiss imported", "faiss" in sys.modules)
"""


def test_search_prints_no_faiss_loader_messages(tmp_path):
    import subprocess

    plain = "import logging; logging.basicConfig(level=logging.INFO); import faiss"
    control = subprocess.run(
        [sys.executable, "-c", plain], capture_output=True, text=True, timeout=120
    )
    if "Loading faiss" not in control.stderr:
        pytest.skip("this faiss logs nothing when imported: nothing to silence")
    colours = {"ann": (250, 10, 10), "bob": (10, 250, 10)}
    _write_folder(tmp_path / "gallery", colours, 2)
    _write_folder(tmp_path / "probes", colours, 1)
    argv = [str(tmp_path / f) for f in ("gallery", "probes", "out")]
    run = subprocess.run(
        [sys.executable, "-c", _FRESH_SEARCH, *argv], capture_output=True, text=True, timeout=300
    )
    assert "exit 0 faiss imported True" in run.stdout, run.stderr
    assert "INFO facelab.eval.run: 1:N search:" in run.stderr  # INFO logging was on
    loader = [line for line in run.stderr.splitlines() if "faiss" in line and "loader" in line]
    assert loader == ["WARNING faiss.loader: a real faiss loading problem"], loader  # warnings kept
    assert "Loading faiss" not in run.stdout + run.stderr
