import itertools
import json

import cv2
import numpy as np
import pytest
import torch
from tests.references.float_paths import DIST_TOL
from tests.references.ijb_fixture import write_ijb_fixture
from torch import nn

from facelab.align import align_face
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images, embed_raw
from facelab.eval.protocols import ijb
from facelab.io import read_image

MODES = ["N{}D{}F{}".format(*bits) for bits in itertools.product((0, 1), repeat=3)]


# ---------------------------------------------------------------- pooling


def _loop_templates(feats, flips, scores, templates, medias, mode):
    """Direct transcription: per image (+flip, normalise, x score); media mean; sum; normalise."""
    n, d, f = (mode[i] == "1" for i in (1, 3, 5))
    out = {}
    for t in sorted(set(templates.tolist())):
        total = np.zeros(feats.shape[1])
        for m in sorted({medias[i] for i in range(len(templates)) if templates[i] == t}):
            rows = []
            for i in range(len(templates)):
                if templates[i] == t and medias[i] == m:
                    x = feats[i].astype(np.float64) + (flips[i] if f else 0.0)
                    if n:
                        x = x / np.sqrt(np.sum(x * x))
                    if d:
                        x = x * scores[i]
                    rows.append(x)
            total += sum(rows) / len(rows)
        out[t] = total / np.sqrt(np.sum(total * total))
    return out


def _random_meta(rng, n=40, d=6):
    templates = rng.choice([3, 7, 100, 101, 250], n)
    medias = rng.choice([1, 2, 5, 9], n)  # media ids shared between templates, as in IJB
    return (
        templates,
        medias,
        rng.normal(size=(n, d)),
        rng.normal(size=(n, d)),
        rng.uniform(0.1, 1.0, n),
    )


@pytest.mark.parametrize("mode", MODES)
def test_template_pooling_matches_loop(mode):
    rng = np.random.default_rng(0)
    templates, medias, feats, flips, scores = _random_meta(rng)
    x = ijb.image_features(feats, flips, scores, mode)
    tids, tf = ijb.template_features(x, templates, medias)
    ref = _loop_templates(feats, flips, scores, templates, medias, mode)
    assert tids.tolist() == sorted(ref)
    np.testing.assert_allclose(tf, np.stack([ref[t] for t in tids]), atol=1e-12)
    # few firsts x many seconds (score-matrix path) and a chain of distinct pairs (gather path)
    for pairs in (
        [[3, 7], [250, 100], [101, 101], [3, 250]],
        [[3, 7], [7, 100], [100, 101], [101, 250], [250, 3]],
    ):
        expect = [ref[a] @ ref[b] for a, b in pairs]
        np.testing.assert_allclose(ijb.pair_scores(tids, tf, np.array(pairs)), expect, atol=1e-12)


def test_modes_differ_and_select_subset():
    rng = np.random.default_rng(1)
    templates, medias, feats, flips, scores = _random_meta(rng)
    outs = {
        m: ijb.template_features(ijb.image_features(feats, flips, scores, m), templates, medias)[1]
        for m in MODES
    }
    for a, b in itertools.combinations(MODES, 2):
        assert not np.allclose(outs[a], outs[b]), (a, b)
    x = ijb.image_features(feats, flips, scores, "N0D1F1")
    tids, tf = ijb.template_features(x, templates, medias, select=np.array([250, 7, 7]))
    assert tids.tolist() == [7, 250]
    np.testing.assert_allclose(tf, outs["N0D1F1"][[1, 4]])


def test_pooling_errors():
    feats = np.ones((3, 2))
    with pytest.raises(FacelabError, match="N0D1F1"):
        ijb.parse_mode("N2D1F1")
    with pytest.raises(FacelabError, match="flipped"):
        ijb.image_features(feats, None, np.ones(3), "N0D0F1")
    with pytest.raises(FacelabError, match="no images"):
        ijb.template_features(feats, np.array([1, 1, 2]), np.array([1, 2, 3]), select=np.array([5]))
    tids, tf = ijb.template_features(feats, np.array([1, 1, 2]), np.array([1, 2, 3]))
    with pytest.raises(FacelabError, match="template 9"):
        ijb.pair_scores(tids, tf, np.array([[1, 9]]))


# ---------------------------------------------------------------- ROC and TAR@FAR


def _published_tar(fpr, tpr, far):
    """insightface ijb_11.py: flip the curve, the first minimum of (|fpr - far|, index)."""
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr)), strict=True))
    return tpr[i]


def test_roc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for _ in range(5):
        y = rng.integers(0, 2, 300)
        s = np.round(rng.normal(size=300) + y, 1)  # many ties
        for drop in (True, False):
            fpr, tpr, thr = ijb.roc_curve(y, s, drop)
            f2, t2, th2 = metrics.roc_curve(y, s, drop_intermediate=drop)
            np.testing.assert_array_equal(fpr, f2)
            np.testing.assert_array_equal(tpr, t2)
            np.testing.assert_array_equal(thr[1:], th2[1:])


def test_roc_by_hand():
    # scores high->low: P N P N N ; accept score >= threshold
    fpr, tpr, thr = ijb.roc_curve(
        [1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5], drop_intermediate=False
    )
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5])
    # (1/3,1) and (2/3,1) collinear
    fpr, tpr, _ = ijb.roc_curve([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1])


def test_nearest_rule_matches_transcription():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.normal(size=2000) + 1.5 * y, 2)
    fpr, tpr, _ = ijb.roc_curve(y, s)
    # exact and halfway
    targets = list(ijb.FARS) + list(np.unique(fpr)[:20]) + list((fpr[1:] + fpr[:-1]) / 2)
    for far in targets:
        assert tpr[ijb.tar_at_far_nearest(fpr, tpr, far)] == _published_tar(fpr, tpr, far), far


def test_nearest_versus_strict_by_hand():
    # 4 negatives: FPR steps of 1/4. Scores high->low: P P N P N P N N
    y = [1, 1, 0, 1, 0, 1, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    r = ijb.verification_metrics(y, s, fars=[0.2, 0.375, 1e-3])
    # FAR 0.2: nearest FPR is 1/4, largest TPR there 3/4; strict: FPR 0 -> 2/4
    assert r["tar_at_far"]["0.2"] == 0.75 and r["tar_at_far_strict"]["0.2"] == 0.5
    assert r["far_read"]["0.2"] == 0.25
    assert r["threshold"]["0.2"] == 0.6 and r["threshold_strict"]["0.2"] == 0.8
    # FAR 0.375: FPR 1/4 and 1/2 are exactly as near; the published rule takes the larger FPR (first
    # in the flipped curve) -> TPR 1; strict -> 3/4
    assert r["far_read"]["0.375"] == 0.5 and r["tar_at_far"]["0.375"] == 1.0
    assert r["tar_at_far_strict"]["0.375"] == 0.75
    assert r["tar_at_far"]["0.001"] == 0.5 and r["tar_at_far_strict"]["0.001"] == 0.5
    assert (r["positives"], r["negatives"], r["pairs"]) == (4, 4, 8)
    # 3 (negative above positive) inversions of 16 pairs
    assert r["auc"] == pytest.approx(1 - 3 / 16)


def test_strict_rule_is_max_tpr_within_far():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + y
    fpr, tpr, thr = ijb.roc_curve(y, s, drop_intermediate=False)
    for far in (0.0, 0.01, 0.1, 0.5):
        i = ijb.tar_at_far_strict(fpr, tpr, far)
        best = max(
            np.mean(s[y == 1] >= t) for t in np.append(s, np.inf) if np.mean(s[y == 0] >= t) <= far
        )
        assert tpr[i] == best and fpr[i] <= far


# ---------------------------------------------------------------- meta files


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("ijbc_face_tid_mid.txt", "1.jpg 1 5\n2.jpg 1\n", ":2:"),
        ("ijbc_face_tid_mid.txt", "1.jpg 1 5\n\n2.jpg x 5\n", ":3: template_id"),
        ("ijbc_template_pair_label.txt", "1 2 1\n1 3 2\n", ":2: label"),
        ("ijbc_template_pair_label.txt", "1 2 1\n1 3 0\n4 5.5 0\n", ":3: template_id_2"),
        ("ijbc_template_pair_label.txt", "1 2 1\n1 3\n", ":2:"),
        (
            "ijbc_name_5pts_score.txt",
            "1.jpg " + "1 " * 10 + "0.9\n2.jpg " + "1 " * 10 + "\n",
            ":2:",
        ),
        ("ijbc_name_5pts_score.txt", "1.jpg " + "1 " * 10 + "nan\n", ":1: non-finite"),
    ],
)
def test_meta_bad_lines_name_file_and_line(tmp_path, name, text, where):
    path = _write(tmp_path / name, text)
    reader = {
        "face": ijb.read_face_tid_mid,
        "temp": ijb.read_template_pairs,
        "name": ijb.read_5pts_score,
    }
    with pytest.raises(FacelabError, match=f"{name}{where}"):
        reader[name[5:9]](path)


def test_meta_reorders_landmarks_by_name(tmp_path):
    meta = tmp_path / "IJBC" / "meta"
    _write(meta / "ijbc_face_tid_mid.txt", "a.jpg 1 1\nb.jpg 2 2\n")
    _write(meta / "ijbc_template_pair_label.txt", "1 2 0\n1 1 1\n")
    _write(
        meta / "ijbc_name_5pts_score.txt",
        "b.jpg " + "2 " * 10 + "0.5\na.jpg " + "1 " * 10 + "0.9\n",
    )
    m = ijb.read_ijb_meta(tmp_path / "IJBC")
    assert m.prefix == "ijbc" and m.names.tolist() == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(m.scores, [0.9, 0.5])
    assert m.landmarks[1, 4, 1] == 2 and m.labels.tolist() == [False, True]
    _write(
        meta / "ijbc_name_5pts_score.txt",
        "c.jpg " + "2 " * 10 + "0.5\na.jpg " + "1 " * 10 + "0.9\n",
    )
    with pytest.raises(FacelabError, match="b.jpg"):
        ijb.read_ijb_meta(tmp_path / "IJBC")
    with pytest.raises(FacelabError, match="no meta/"):
        ijb.read_ijb_meta(tmp_path)


# ---------------------------------------------------------------- end to end on a fixture


def _faces(subjects=6, per=4, seed=0):
    """Aligned 112x112 crops: a smooth random pattern per subject plus per-image noise."""
    rng = np.random.default_rng(seed)
    bases = rng.uniform(0, 255, (subjects, 14, 14, 3)).astype(np.float32)
    images, ids = [], []
    for s in range(subjects):
        for _ in range(per):
            im = cv2.resize(bases[s], (112, 112), interpolation=cv2.INTER_CUBIC) + rng.normal(
                0, 12, (112, 112, 3)
            )
            images.append(np.clip(im, 0, 255).astype(np.uint8))
            ids.append(s)
    return np.stack(images), np.array(ids)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 14 * 14, 16))


def _aligned(root, meta):
    """Independent of the driver: read each loose crop and align it with its landmarks."""
    crops = [read_image(root / "loose_crop" / n) for n in meta.names]
    return np.stack([align_face(c, lm) for c, lm in zip(crops, meta.landmarks, strict=True)])


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    images, ids = _faces()
    root = write_ijb_fixture(
        tmp_path_factory.mktemp("ijb") / "IJBC", images, ids, templates_per_subject=2
    )
    return root, images, ids


def test_fixture_round_trip(fixture_root):
    root, images, ids = fixture_root
    meta = ijb.read_ijb_meta(root)
    assert len(meta.names) == len(images) and len(np.unique(meta.templates)) == 12
    t_subject = {t: ids[i] for i, t in enumerate(meta.templates)}
    assert all(
        lab == (t_subject[a] == t_subject[b])
        for (a, b), lab in zip(meta.pairs, meta.labels, strict=True)
    )
    assert len(meta.pairs) == 12 * 11 // 2
    assert read_image(root / "loose_crop" / meta.names[5]).shape == (160, 160, 3)


def test_fixture_landmarks_align_back(tmp_path):
    smooth = np.stack([cv2.GaussianBlur(im, (0, 0), 3) for im in _faces(2, 1)[0]])
    root = write_ijb_fixture(tmp_path / "IJBB", smooth, [4, 9], dataset="IJBB", seed=3)
    meta = ijb.read_ijb_meta(root)
    assert meta.prefix == "ijbb" and (root / "meta" / "ijbb_1N_gallery_S2.csv").exists()
    for i in range(2):
        back = align_face(
            read_image(root / "loose_crop" / meta.names[i]), meta.landmarks[i]
        ).astype(float)
        err = np.abs(back - smooth[i])[8:-8, 8:-8].mean()
        shifted = np.abs(np.roll(smooth[i], 3, axis=1).astype(float) - smooth[i])[8:-8, 8:-8].mean()
        assert err < 4 and err < shifted / 2  # interpolation + JPEG only, no misplacement


def test_driver_matches_direct_computation(fixture_root, tmp_path):
    root, _, ids = fixture_root
    meta = ijb.read_ijb_meta(root)
    model = _model()
    aligned = _aligned(root, meta)
    # the driver's batch size below: the same path, so the same features bit for bit and the same
    # TAR@FAR (another batch size is another kernel path, whose scores may cross a threshold)
    f, ff = embed_raw(model, aligned, batch_size=7)
    # batch 256 against 7, float32 rounding: up to 3.4e-7 seen over ISAs
    np.testing.assert_allclose(
        embed_images(model, aligned),
        (f + ff) / np.linalg.norm(f + ff, axis=1, keepdims=True),
        rtol=0,
        atol=DIST_TOL,
    )
    cache = tmp_path / "feats.npz"
    res = ijb.evaluate_ijb(
        model,
        root,
        out=tmp_path / "out",
        modes=("N0D1F1", "N1D0F0"),
        batch_size=7,
        workers=0,
        features=cache,
    )
    direct = ijb.evaluate_ijb_features(meta, f, ff, modes=("N0D1F1", "N1D0F0"))
    for mode in ("N0D1F1", "N1D0F0"):
        a, b = res["verification"][mode], direct["verification"][mode]
        assert a["tar_at_far"] == b["tar_at_far"] and a["auc"] == pytest.approx(b["auc"], abs=1e-9)
        assert a["tar_at_far"]["0.1"] == 1.0  # the subjects are easy: the wiring of labels is right
    g = res["identification"]["galleries"]
    assert set(g) == {"G1", "G2", "mean"} and g["G1"]["mated"] == g["G2"]["non_mated"] == 3
    assert g["mean"]["cmc"]["1"] == 1.0
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "fpr" not in saved["verification"]["N0D1F1"] and saved["dataset"] == "IJBC"
    assert (tmp_path / "out" / "roc.png").stat().st_size > 1000
    assert "| N1D0F0 |" in (tmp_path / "out" / "table.md").read_text()

    class Refuse(nn.Module):  # the cache must be used: no model call
        def forward(self, x):
            raise AssertionError("model called despite the feature cache")

    again = ijb.evaluate_ijb(Refuse(), root, modes=("N0D1F1",), features=cache, one_to_n=False)
    assert (
        again["verification"]["N0D1F1"]["tar_at_far"] == res["verification"]["N0D1F1"]["tar_at_far"]
    )
    assert "identification" not in again


def test_union_gallery_is_closed_set(fixture_root):
    root, _, _ = fixture_root
    meta = ijb.read_ijb_meta(root)
    f, ff = embed_raw(_model(), _aligned(root, meta))
    out = ijb.identify_ijb(meta, f, ff, gallery="union")["galleries"]
    assert list(out) == ["G1+G2"]
    assert out["G1+G2"]["non_mated"] == 0 and out["G1+G2"]["tpir_at_fpir"]["0.01"] is None


def test_process_pool_gives_the_same_features(fixture_root):
    root, _, _ = fixture_root
    meta = ijb.read_ijb_meta(root)
    model = _model()
    f0, ff0 = ijb.extract_features(model, meta, workers=0, window=10)
    f1, ff1 = ijb.extract_features(model, meta, workers=1, window=10)
    np.testing.assert_array_equal(f0, f1)
    np.testing.assert_array_equal(ff0, ff1)
