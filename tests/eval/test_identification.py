import numpy as np
import pytest

from facelab.errors import FacelabError
from facelab.eval.protocols import identification as ident
from facelab.eval.reports.tables import format_identification_table


def _unit(degrees):
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1)


# gallery: subject 1 at 0 deg, subject 2 at 90 deg, subject 3 at 180 deg
GALLERY, GALLERY_IDS = _unit([0, 90, 180]), np.array([1, 2, 3])
# probe (subject, angle): rank of the mate and its score worked out by hand
PROBES = [
    (1, 10),  # mate 1 at cos 10 = 0.985, best: rank 1
    (2, 30),  # subject 1 scores cos 30 > mate cos 60: rank 2
    (3, 100),  # subject 2 scores cos 10 > mate cos 80: rank 2
    (3, 200),  # mate cos 20 = 0.940: rank 1
    (9, 45),  # non-mated, top-1 score cos 45 = 0.707
    (8, -90),  # non-mated, top-1 score cos 90 ~ 0
    (2, 130),  # mate cos 40 = 0.766 > subject 3 cos 50: rank 1
    (1, -50),  # mate cos 50 = 0.643 (below the non-mated 0.707): rank 1
]


def _hand_case(**kw):
    ids = np.array([p[0] for p in PROBES])
    return ident.search(_unit([p[1] for p in PROBES]), ids, GALLERY, GALLERY_IDS, **kw)


def test_cmc_and_tpir_by_hand():
    r = _hand_case(ranks=(1, 2, 5), fpirs=(0.01, 0.5, 1.0))
    assert (r["probes"], r["mated"], r["non_mated"], r["gallery"]) == (8, 6, 2, 3)
    assert r["cmc"] == {"1": 4 / 6, "2": 1.0, "5": 1.0}
    # FPIR 0.01 of 2 non-mated: no false alarm allowed -> threshold 0.707: rank-1 mates 0.985,
    # 0.940, 0.766
    assert r["threshold"]["0.01"] == pytest.approx(np.cos(np.radians(45)))
    assert r["tpir_at_fpir"]["0.01"] == 0.5 and r["fpir_achieved"]["0.01"] == 0.0
    # FPIR 0.5: one false alarm allowed -> threshold ~0 -> the 0.643 mate counts too
    assert r["tpir_at_fpir"]["0.5"] == 4 / 6 and r["fpir_achieved"]["0.5"] == 0.5
    assert r["threshold"]["1"] is None and r["tpir_at_fpir"]["1"] == 4 / 6  # threshold -inf


def test_ties_count_against_the_probe():
    probe, gallery = np.array([[1.0, 1.0]]) / np.sqrt(2), np.eye(2)  # exactly equal scores
    r = ident.search(probe, np.array([1]), gallery, np.array([1, 2]), ranks=(1, 2))
    assert r["cmc"] == {"1": 0.0, "2": 1.0}  # equally close to its mate and to subject 2


def _brute_force(probes, pids, gallery, gids, ranks, fpirs):
    """Loop transcription: sort every probe's gallery list; sweep every threshold for TPIR@FPIR."""
    sim = probes @ gallery.T
    rank, top, mate_top = {}, {}, {}
    for i in range(len(probes)):
        order = sorted(range(len(gallery)), key=lambda j: -sim[i, j])
        top[i] = sim[i, order[0]]
        if pids[i] in gids:
            rank[i] = 1 + [gids[j] for j in order].index(pids[i])
            mate_top[i] = gids[order[0]] == pids[i]
    mated = sorted(rank)
    non = [i for i in range(len(probes)) if i not in rank]
    cmc = {str(k): sum(rank[i] <= k for i in mated) / len(mated) for k in ranks}
    tpir = {}
    for f in fpirs:
        best = None
        for t in [-np.inf] + [top[i] for i in non]:
            if sum(top[i] > t for i in non) / len(non) <= f:
                hit = sum(mate_top[i] and top[i] > t for i in mated) / len(mated)
                best = hit if best is None else max(best, hit)
        tpir[f"{f:g}"] = best
    return cmc, tpir


def test_search_matches_brute_force_in_blocks():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(10, 8))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    gids = np.arange(100, 110)
    pids = rng.choice(np.arange(100, 115), 60)  # ids 110..114 have no gallery template
    probes = gallery[np.clip(pids - 100, 0, 9)] + rng.normal(scale=0.9, size=(60, 8))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    ranks, fpirs = (1, 3, 5, 10), (0.01, 0.1, 0.3)
    r = ident.search(probes, pids, gallery, gids, ranks, fpirs, block=7)
    cmc, tpir = _brute_force(probes, pids, gallery, gids, ranks, fpirs)
    assert r["cmc"] == pytest.approx(cmc) and r["tpir_at_fpir"] == pytest.approx(tpir)
    assert 0 < r["cmc"]["1"] < 1 and r["cmc"]["10"] == 1.0
    for f in fpirs:
        assert r["fpir_achieved"][f"{f:g}"] <= f


def test_closed_set_has_no_tpir_and_mean():
    r = ident.search(_unit([10, 100]), np.array([1, 2]), GALLERY, GALLERY_IDS)
    assert r["non_mated"] == 0 and r["tpir_at_fpir"] == {"0.01": None, "0.1": None}
    m = ident.mean_results([r, _hand_case()])
    assert m["cmc"]["1"] == pytest.approx((1.0 + 4 / 6) / 2)
    assert m["tpir_at_fpir"]["0.01"] == 0.5  # None entries are left out
    assert "| b |" in format_identification_table(
        {"a": r, "b": m}
    ) and "—" in format_identification_table({"a": r})


def test_read_1n_csv(tmp_path):
    path = tmp_path / "ijbc_1N_gallery_G1.csv"
    path.write_text(
        "\ufeffTEMPLATE_ID,SUBJECT_ID,FILENAME,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"
        "7,30,img/1.jpg,1,2,3,4\n7,30,frames/2_1.png,1,2,3,4\n\n2,11,img/3.jpg,1,2,3,4\n"
    )
    tids, sids = ident.read_1n_csv(path)
    assert tids.tolist() == [2, 7] and sids.tolist() == [11, 30]
    path.write_text("SUBJECT_ID,TEMPLATE_ID\n30,7\n31,7\n")  # columns found by name
    with pytest.raises(FacelabError, match=r"G1.csv:3: template 7 has subjects 30 and 31"):
        ident.read_1n_csv(path)
    path.write_text("TEMPLATE_ID,SUBJECT_ID\n7,x\n")
    with pytest.raises(FacelabError, match=r"G1.csv:2: "):
        ident.read_1n_csv(path)
    path.write_text("7,30,img/1.jpg\n")
    with pytest.raises(FacelabError, match=r"G1.csv:1: header"):
        ident.read_1n_csv(path)


def test_merge_lists_and_errors():
    t, s = ident.merge_lists(
        (np.array([1, 5]), np.array([10, 50])), (np.array([3, 5]), np.array([30, 50]))
    )
    assert t.tolist() == [1, 3, 5] and s.tolist() == [10, 30, 50]
    with pytest.raises(FacelabError, match="disagree"):
        ident.merge_lists((np.array([1]), np.array([10])), (np.array([1]), np.array([11])))
    with pytest.raises(FacelabError, match="dim"):
        ident.search(np.ones((2, 3)), np.array([1, 2]), GALLERY, GALLERY_IDS)
