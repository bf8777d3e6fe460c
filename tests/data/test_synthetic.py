"""Synthetic faces: determinism, landmark geometry, output files, pair sets, validation, reuse."""

import csv
import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from facelab.data.pairsets import load_bin
from facelab.data.synthetic import (
    FIRST_VERIFICATION_ID,
    FRAME,
    make_identity,
    render,
    run_synth,
    sample_nuisance,
)
from facelab.data.synthetic import dataset as synth_dataset
from facelab.data.synthetic.dataset import MANIFEST, PARTIAL
from facelab.data.synthetic.pairs import PAIR_SETS, plan_pairs
from facelab.data.synthetic.photo import encode_jpeg
from facelab.errors import FacelabError

N_ID, PER_ID, SEED, PAIRS = 3, 2, 5, 20


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    run_synth(out, N_ID, PER_ID, SEED, pairs=PAIRS, workers=1)
    return out


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _clean(index: int = 1, **changes):
    n = sample_nuisance(np.random.default_rng(index), "clean")
    base = dict(yaw=0.0, pitch=0.0, roll=0.0, gaze_x=0.0, gaze_y=0.0, cx=FRAME / 2, cy=FRAME / 2,
                face_px=80.0, resolution=80.0, noise=0.0, blur=0.0)
    return replace(n, **{**base, **changes})


def test_identity_is_a_pure_function_of_seed_and_index():
    assert asdict(make_identity(3, 7)) == asdict(make_identity(3, 7))
    assert make_identity(3, 7) != make_identity(3, 8)
    assert make_identity(3, 7) != make_identity(4, 7)
    many = {make_identity(0, i).texture_seed for i in range(50)}
    assert len(many) == 50  # every identity has its own fine texture


def test_same_inputs_give_identical_pixels_and_jpeg_bytes():
    ident = make_identity(1, 2)
    n = sample_nuisance(np.random.default_rng(9), "mixed")
    (a, la, _), (b, lb, _) = render(ident, n), render(ident, n)
    assert a.dtype == np.uint8 and a.shape == (FRAME, FRAME, 3)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert encode_jpeg(a, n.jpeg) == encode_jpeg(b, n.jpeg)
    other, _, _ = render(make_identity(1, 3), n)
    assert not np.array_equal(a, other)


def test_eye_distance_follows_cos_yaw_and_keeps_left_right_order():
    """Orthographic truth: eyes at head x = +-eye_x (same y, z) project at distance
    eye_x * face_px * cos(yaw)."""
    ident = make_identity(0, 4)
    for deg in (0, 20, 45, 70, -70):
        lm = render(ident, _clean(yaw=math.radians(deg)))[1]
        dist = lm[1, 0] - lm[0, 0]
        assert dist > 0  # left eye (smaller x) first
        assert dist == pytest.approx(ident.eye_x * 80.0 * math.cos(math.radians(deg)), rel=1e-6)
        assert abs(lm[1, 1] - lm[0, 1]) < 1e-6  # no roll/pitch: eyes level
    nose_dx = [render(ident, _clean(yaw=math.radians(d)))[1][2, 0] - FRAME / 2
               for d in (-40, 0, 40)]
    # yaw > 0 turns the face to image right
    assert nose_dx[0] < -5 and abs(nose_dx[1]) < 1e-6 and nose_dx[2] > 5
    lm = render(ident, _clean(roll=math.radians(30)))[1]
    angle = math.degrees(math.atan2(lm[1, 1] - lm[0, 1], lm[1, 0] - lm[0, 0]))
    assert angle == pytest.approx(30, abs=1e-6)


def test_landmarks_sit_on_the_rendered_pupils():
    """In a clean frontal photo the projected eye centres fall on the drawn (black) pupils: far
    darker than the cheek just below the eye."""
    for index in range(6):
        ident = make_identity(2, index)
        n = _clean(index, eyes_closed=0.0, smile=0.0, occlusion="none")
        img, lm, _ = render(ident, n)
        bright = img.max(-1).astype(float)
        for x, y in lm[:2]:
            xi, yi = int(round(x)), int(round(y))
            # 0.3-0.4 head units below the eye
            cheek = np.median(bright[yi + 12:yi + 17, xi - 2:xi + 3])
            assert bright[yi - 1:yi + 2, xi - 1:xi + 2].min() < 0.5 * cheek, index


def test_landmarks_csv_is_inside_the_frame_and_matches_the_renderer(synth):
    rows = _rows(synth / "landmarks.csv")
    assert list(rows[0]) == ["image", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"]
    assert [r["image"] for r in rows] == [f"{i:05d}/{n:02d}.jpg"
                                          for i in range(N_ID) for n in range(PER_ID)]
    pts = np.array([[float(r[k]) for k in list(r)[1:]] for r in rows]).reshape(-1, 5, 2)
    assert (pts > 0).all() and (pts < FRAME).all()
    assert (pts[:, 1, 0] > pts[:, 0, 0]).all()
    ident = make_identity(SEED, 1)
    expected = render(ident, sample_nuisance(synth_dataset.photo_rng(SEED, 1, 0), "mixed"))[1]
    assert np.allclose(pts[PER_ID], expected, atol=1e-3)  # the row of 00001/00.jpg


def test_attributes_csv_has_every_column_for_every_image(synth):
    rows = _rows(synth / "attributes.csv")
    assert len(rows) == N_ID * PER_ID
    need = {"image", "identity", "yaw_deg", "pitch_deg", "roll_deg", "smile", "mouth_open",
            "eyes_closed", "light_az_deg", "light_el_deg", "light", "ambient", "blur", "noise",
            "resolution", "face_px", "jpeg", "occlusion", "occlusion_frac"}
    assert need <= set(rows[0])
    for r in rows:
        assert all(v != "" for v in r.values())
        assert int(r["identity"]) == int(r["image"].split("/")[0])
        assert abs(float(r["yaw_deg"])) <= 90
        assert 0 < float(r["resolution"]) <= float(r["face_px"]) + 1e-6
        assert (synth / "images" / r["image"]).is_file()
    manifest = json.loads((synth / MANIFEST).read_text())
    assert manifest["counts"]["images"] == N_ID * PER_ID and not (synth / PARTIAL).exists()


def test_photos_are_rgb_jpegs_of_the_rendered_image(synth):
    from facelab.io import read_image

    n = sample_nuisance(synth_dataset.photo_rng(SEED, 2, 1), "mixed")
    expected = render(make_identity(SEED, 2), n)[0].astype(float)
    got = read_image(synth / "images" / "00002" / "01.jpg").astype(float)
    # JPEG error only (a BGR/RGB swap would be far larger)
    assert np.abs(got - expected).mean() < 12
    assert np.abs(got[..., ::-1] - expected).mean() > np.abs(got - expected).mean()


@pytest.mark.parametrize("name", list(PAIR_SETS))
def test_pair_sets_are_balanced_per_fold_and_use_unseen_identities(synth, name):
    images, same = load_bin(synth / "pairs" / f"{name}.bin")
    assert images.shape == (2 * PAIRS, 112, 112, 3) and images.dtype == np.uint8
    assert same.shape == (PAIRS,)
    rows = _rows(synth / "pairs" / f"{name}.csv")
    assert [r["same"] == "1" for r in rows] == same.tolist()
    fold = PAIRS // 10
    for f in range(10):
        block = rows[f * fold:(f + 1) * fold]
        assert {int(r["fold"]) for r in block} == {f}
        assert sum(r["same"] == "1" for r in block) == fold // 2
    ids = [{int(r["left_identity"]), int(r["right_identity"])} for r in rows]
    assert min(min(s) for s in ids) >= FIRST_VERIFICATION_ID
    per_fold = [set().union(*ids[f * fold:(f + 1) * fold]) for f in range(10)]
    assert all(not (per_fold[a] & per_fold[b]) for a in range(10) for b in range(a))
    for r in rows:
        assert (r["left_identity"] == r["right_identity"]) == (r["same"] == "1")
    if name == "synth-cfp":
        assert all(abs(float(r["left_yaw_deg"])) < 10 and abs(float(r["right_yaw_deg"])) > 60
                   for r in rows)
    if name == "synth-lowres":
        assert all(float(r["right_resolution"]) <= 9 for r in rows)


def test_pair_plan_is_balanced_for_the_default_size():
    plan = plan_pairs("synth-lfw", 3000, 0)
    same = np.array([p[1] for p in plan]).reshape(10, 300)
    assert (same.sum(1) == 150).all()
    assert [p[0] for p in plan] == sorted(p[0] for p in plan)
    assert len({(a, b) for _, _, a, b in plan}) > 2900  # pairs are (nearly all) distinct


BAD = [dict(identities=0), dict(identities=-2), dict(images_per_identity=0), dict(pairs=30),
       dict(pairs=-20), dict(seed=-1), dict(workers=0), dict(identities=True),
       dict(identities=2.5), dict(identities=FIRST_VERIFICATION_ID)]


@pytest.mark.parametrize("kwargs", BAD)
def test_bad_arguments_raise_facelab_error(tmp_path, kwargs):
    args = {"identities": 2, "images_per_identity": 1, "seed": 0, "pairs": 0, **kwargs}
    with pytest.raises(FacelabError):
        run_synth(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FacelabError, match="not a synthetic dataset"):
        run_synth(tmp_path, 1, 1, 0, pairs=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_complete_output_with_same_parameters_is_reused(synth, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("rendered although a complete output exists")

    monkeypatch.setattr(synth_dataset, "render", boom)
    before = (synth / "landmarks.csv").stat().st_mtime_ns
    out = run_synth(synth, N_ID, PER_ID, SEED, pairs=PAIRS, workers=1)
    assert out["reused"] and out["counts"]["images"] == N_ID * PER_ID
    assert (synth / "landmarks.csv").stat().st_mtime_ns == before


def test_worker_pool_output_is_byte_identical(synth, tmp_path):
    run_synth(tmp_path / "b", N_ID, PER_ID, SEED, pairs=0, workers=2)
    for rel in ("landmarks.csv", "attributes.csv", "images/00000/00.jpg", "images/00002/01.jpg"):
        assert (tmp_path / "b" / rel).read_bytes() == (synth / rel).read_bytes(), rel


def test_interrupted_run_is_not_complete_and_is_regenerated(tmp_path, monkeypatch):
    out = tmp_path / "c"
    calls = {"n": 0}
    real = synth_dataset.render

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(synth_dataset, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_synth(out, 2, 2, 1, pairs=0, workers=1)
    assert (out / PARTIAL).exists() and not (out / MANIFEST).exists()
    assert not (out / "landmarks.csv").exists()
    monkeypatch.setattr(synth_dataset, "render", real)
    m = run_synth(out, 2, 2, 1, pairs=0, workers=1)
    assert not m["reused"] and not (out / PARTIAL).exists()
    assert len(_rows(out / "landmarks.csv")) == 4


def test_changed_parameters_regenerate_the_output(synth, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(synth, out)
    m = run_synth(out, N_ID, 1, SEED, pairs=0, workers=1)
    assert not m["reused"] and m["counts"]["images"] == N_ID
    assert sorted(p.name for p in (out / "images" / "00000").iterdir()) == ["00.jpg"]
    assert not (out / "pairs").exists()
