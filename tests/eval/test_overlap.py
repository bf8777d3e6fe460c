"""facelab overlap: class centres, ranked candidates, precision/recall, best F1, merged folder."""

import numpy as np
import pytest

from facelab.errors import FacelabError
from facelab.eval.checks.overlap import (
    best_f1,
    candidates,
    class_centres,
    merge_folders,
    precision_recall,
    read_truth,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def toy():
    """A: classes a0..a3 around 4 directions; B: b0 = a2's person, b1 = a0's, b2 new."""
    rng = np.random.default_rng(0)
    dirs = unit(rng.normal(size=(6, 16)))

    def images(d, n):
        return unit(dirs[d] + 0.15 * rng.normal(size=(n, 16)))

    fa = np.concatenate([images(d, 5) for d in range(4)])
    na = np.repeat(["a0", "a1", "a2", "a3"], 5)
    fb = np.concatenate([images(2, 4), images(0, 4), images(5, 4)])
    nb = np.repeat(["b0", "b1", "b2"], 4)
    return fa, na, fb, nb


def test_centres_are_normalised_class_means():
    feats = unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    classes, centres = class_centres(feats, np.array(["x", "x", "y"]))
    assert classes == ["x", "y"]
    np.testing.assert_allclose(centres, [[2**-0.5, 2**-0.5], [1.0, 0.0]])


def test_candidates_rank_the_shared_identities_first():
    rows = candidates(*toy())
    assert [(r["b_class"], r["a_class"]) for r in rows[:2]] in (
        [("b0", "a2"), ("b1", "a0")],
        [("b1", "a0"), ("b0", "a2")],
    )
    assert rows[0]["similarity"] >= rows[1]["similarity"] > 0.8 > rows[2]["similarity"]
    assert rows[0]["sample_agreement"] == 1.0


def test_precision_recall_and_best_f1():
    rows = [
        {"b_class": "b0", "a_class": "a2", "similarity": 0.9},
        {"b_class": "b1", "a_class": "a1", "similarity": 0.7},
        {"b_class": "b2", "a_class": "a0", "similarity": 0.4},
    ]
    truth = {("a2", "b0"), ("a0", "b2")}
    r = precision_recall(rows, truth, 0.6)  # called b0 (right) and b1 (wrong)
    assert (r["called"], r["true"], r["precision"], r["recall"]) == (2, 1, 0.5, 0.5)
    best = best_f1(rows, truth)  # t=0.9: P 1, R .5, F1 2/3; t=0.4: P 2/3, R 1, F1 0.8
    assert best["threshold"] == 0.4 and best["f1"] == pytest.approx(0.8)
    # no true pair among the candidates: call nothing, no threshold
    none = best_f1(rows, {("a9", "b9")})
    assert none["threshold"] is None and none["called"] == 0 and none["f1"] == 0.0


def test_merge_puts_shared_pairs_in_one_class(tmp_path):
    for root, classes in (("A", ["a0", "a1"]), ("B", ["b0", "b1"])):
        for c in classes:
            (tmp_path / root / c).mkdir(parents=True)
            (tmp_path / root / c / "0.jpg").write_bytes(c.encode())
    rows = [
        {"b_class": "b0", "a_class": "a1", "similarity": 0.8},
        {"b_class": "b1", "a_class": "a0", "similarity": 0.2},
    ]
    summary = merge_folders(tmp_path / "A", tmp_path / "B", rows, 0.5, tmp_path / "M")
    assert summary == {"merged_pairs": 1, "classes": 3}
    assert sorted(p.name for p in (tmp_path / "M" / "A_a1").iterdir()) == ["0.jpg", "B_b0_0.jpg"]
    assert (tmp_path / "M" / "B_b1" / "0.jpg").read_bytes() == b"b1"
    with pytest.raises(FacelabError, match="exists"):
        merge_folders(tmp_path / "A", tmp_path / "B", rows, 0.5, tmp_path / "M")


def test_truth_file(tmp_path):
    (tmp_path / "t.csv").write_text(
        "a_dataset,a_class,b_dataset,b_class,pool_identity\nA,00002,B,00000,2\n"
    )
    assert read_truth(tmp_path / "t.csv") == {("00002", "00000")}
    # synth --datasets 3: the A-C and C-B rows are not about A vs B
    three = (
        "a_dataset,a_class,b_dataset,b_class,pool_identity\nA,00002,B,00000,2\nA,00004,C,00001,4\n"
        "C,00007,B,00003,9\n"
    )
    (tmp_path / "three.csv").write_text(three)
    assert read_truth(tmp_path / "three.csv", ("A", "B")) == {("00002", "00000")}
    # C-B row, swapped
    assert read_truth(tmp_path / "three.csv", ("B", "C")) == {("00003", "00007")}
    found = read_truth(
        tmp_path / "three.csv", a=tmp_path / "out" / "A" / "aligned", b=tmp_path / "out" / "C"
    )
    assert found == {("00004", "00001")}
    with pytest.raises(FacelabError, match="truth-datasets"):
        read_truth(tmp_path / "three.csv", a=tmp_path / "x", b=tmp_path / "y")
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(FacelabError, match="a_class"):
        read_truth(tmp_path / "bad.csv")


def test_centring_removes_a_dataset_shift():
    fa, na, fb, nb = toy()
    shift = np.zeros(16)
    shift[0] = 3.0
    # every B image moved the same way (a domain shift): one A class becomes a hub
    fb = unit(fb + shift)
    rows = candidates(fa, na, fb, nb, centre=True)
    found = {(r["b_class"], r["a_class"]) for r in rows[:2]}
    assert found == {("b0", "a2"), ("b1", "a0")}
