"""`facelab overlap` end to end through the CLI, checked against truth computed here, not by
facelab.eval.checks.overlap.

Two small aligned sets from one identity pool with a known overlap (`facelab synth --datasets 2`,
then `facelab align`), a tiny model trained a few steps on A, then
`facelab overlap A B --model RUN --truth overlap.csv --out DIR --merge MERGED`.
The test proves that:
  (a) candidates.csv has the documented columns, one row per class of B, sorted by similarity
      descending, and every (a_class, b_class) names a real identity folder of A and of B;
  (b) overlap.json is strict JSON; its precision, recall and F1 at the threshold equal those
      recomputed from the CSV rows above it and the synth ground truth (read here with csv, A-B
      rows only), and its best-F1 point equals a sweep over the cuts of the CSV's rows in their
      order (4 decimals can tie rows);
  (c) each row's best A class, centre cosine and sample agreement equal a recomputation from the
      model's own embeddings (load_model + embed_images: flip-fused, normalised; centre =
      normalised mean), to the CSV's rounding and float32 rounding (another batch size: a near tie
      of cosines may go either way);
  (d) the merged folder holds every image of A and of B exactly once (byte-identical copies), each
      shared B class inside its A partner's folder and every other class on its own.
"""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tests.references.float_paths import DIST_TOL

from facelab.cli import main
from facelab.config import config_from_dict
from facelab.eval.embed import embed_images
from facelab.io import IMAGE_SUFFIXES, read_image
from facelab.model import load_model
from facelab.train.loop import train

IDENTITIES, IMAGES, OVERLAP = 20, 4, 0.3
COLUMNS = ["b_class", "a_class", "similarity", "sample_agreement"]


def images_of(folder: Path) -> dict[str, list[Path]]:
    """{class folder name: its image files, sorted} of `folder/<class>/<image>`."""
    return {
        c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for c in sorted(folder.iterdir())
        if c.is_dir()
    }


def my_embeddings(
    model, preprocess, folder: Path
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(classes, unit class centres float64 [C, d], {class: unit image embeddings [n, d]}),
    computed here."""
    per_class = {
        c: embed_images(model, np.stack([read_image(p) for p in files]), preprocess=preprocess)
        for c, files in images_of(folder).items()
    }
    classes = sorted(per_class)
    centres = np.stack([per_class[c].astype(np.float64).mean(axis=0) for c in classes])
    return classes, centres / np.linalg.norm(centres, axis=1, keepdims=True), per_class


def strict_json(name: str):
    raise AssertionError(f"overlap.json holds {name}, which is not JSON")


def scores(called: set, truth: set) -> tuple[float, float, float]:
    hits = len(called & truth)
    p = hits / len(called) if called else 1.0
    r = hits / len(truth)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap_e2e")
    synth = root / "synth"
    assert (
        main(
            [
                "synth",
                str(synth),
                "--datasets",
                "2",
                "--identities",
                str(IDENTITIES),
                "--images-per-identity",
                str(IMAGES),
                "--overlap",
                str(OVERLAP),
                "--pairs",
                "0",
                "--workers",
                "1",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    for name in ("A", "B"):
        assert (
            main(
                [
                    "align",
                    str(synth / name / "images"),
                    str(synth / name / "aligned"),
                    "--landmarks",
                    str(synth / name / "landmarks.csv"),
                    "--workers",
                    "1",
                ]
            )
            == 0
        )
    a, b = synth / "A" / "aligned", synth / "B" / "aligned"
    cfg = config_from_dict(
        {
            "output": str(root / "run"),
            "data": {"train": str(a), "batch_size": 16, "workers": 0},
            "model": {"backbone": "tiny", "embedding_size": 16},
            "head": {"margin": "arcface", "kwargs": {"s": 16.0}},
            "optim": {"lr": 0.05},
            "train": {
                "steps": 4,
                "log_every": 2,
                "checkpoint_every": 100,
                "progress": False,
                "tensorboard": False,
            },
        }
    )
    train(cfg)

    model, preprocess = load_model(root / "run")
    mine = {"A": my_embeddings(model, preprocess, a), "B": my_embeddings(model, preprocess, b)}
    # best A cosine of every B class, ascending
    sims = np.sort((mine["B"][1] @ mine["A"][1].T).max(axis=1))
    gaps = np.diff(sims)
    # widest gap of the middle half
    k = len(sims) // 4 + int(gaps[len(sims) // 4 : 3 * len(sims) // 4].argmax())
    assert gaps[k] > 2e-4, f"no usable gap in the centre cosines {sims}"
    # some pairs called, some not; no row within CSV rounding
    threshold = float((sims[k] + sims[k + 1]) / 2)

    out, merged = root / "out", root / "merged"
    assert (
        main(
            [
                "overlap",
                str(a),
                str(b),
                "--model",
                str(root / "run"),
                "--truth",
                str(synth / "overlap.csv"),
                "--out",
                str(out),
                "--merge",
                str(merged),
                "--threshold",
                f"{threshold!r}",
            ]
        )
        == 0
    )
    with open(out / "candidates.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    with open(synth / "overlap.csv", newline="") as f:
        truth = {
            (r["a_class"], r["b_class"])
            for r in csv.DictReader(f)
            if (r["a_dataset"], r["b_dataset"]) == ("A", "B")
        }
    report = json.loads((out / "overlap.json").read_text(), parse_constant=strict_json)
    return {
        "a": a,
        "b": b,
        "out": out,
        "merged": merged,
        "threshold": threshold,
        "header": header,
        "rows": rows,
        "report": report,
        "truth": truth,
        "mine": mine,
    }


def test_truth_is_the_planned_overlap(run):
    assert len(run["truth"]) == round(OVERLAP * IDENTITIES)
    assert {a for a, _ in run["truth"]} <= set(images_of(run["a"]))
    assert {b for _, b in run["truth"]} <= set(images_of(run["b"]))


def test_ranked_csv(run):
    rows, a_classes, b_classes = run["rows"], set(images_of(run["a"])), set(images_of(run["b"]))
    assert run["header"] == COLUMNS
    assert sorted(r["b_class"] for r in rows) == sorted(b_classes)  # one row per B class
    assert all(r["a_class"] in a_classes for r in rows)
    sims = [float(r["similarity"]) for r in rows]
    assert sims == sorted(sims, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in sims)
    assert all(0.0 <= float(r["sample_agreement"]) <= 1.0 for r in rows)


def test_precision_recall_match_the_csv_and_truth(run):
    rows, truth, t, report = run["rows"], run["truth"], run["threshold"], run["report"]
    called = {(r["a_class"], r["b_class"]) for r in rows if float(r["similarity"]) >= t}
    assert 0 < len(called) < len(rows)
    p, r, f1 = scores(called, truth)
    at = report["at_threshold"]
    assert report["called"] == at["called"] == len(called) and at["true"] == len(called & truth)
    assert at["threshold"] == pytest.approx(t, abs=1e-12)
    assert (at["precision"], at["recall"], at["f1"]) == pytest.approx((p, r, f1), abs=1e-12)

    # best F1: every cut of the rows in the CSV's order, the command's order at full precision (its
    # 4 decimals can tie rows the code tells apart). Not re-sorted by the scores recomputed here:
    # those come from another kernel path, and rows within float32 rounding of each other (the
    # barely trained model puts some 1e-5 apart) could swap. The threshold: the last called row's
    # score recomputed here (test_scores_are_class_centre_cosines_of_the_model ties it to the CSV).
    classes_a, ca, _ = run["mine"]["A"]
    classes_b, cb, _ = run["mine"]["B"]
    full = {b: float((cb[i] @ ca.T).max()) for i, b in enumerate(classes_b)}
    pairs = [(x["a_class"], x["b_class"]) for x in rows]
    best = (0.0, float("inf"), set())
    for m in range(1, len(rows) + 1):  # call the first m rows; ties go to the higher threshold
        chosen = set(pairs[:m])
        if scores(chosen, truth)[2] > best[0] + 1e-12:
            best = (scores(chosen, truth)[2], full[rows[m - 1]["b_class"]], chosen)
    got = report["best_f1"]
    # a shared pair is among the candidates (else the code reports threshold inf)
    assert best[0] > 0
    assert got["f1"] == pytest.approx(best[0], abs=1e-12) and got["threshold"] == pytest.approx(
        best[1], abs=1e-5
    )
    assert (got["called"], got["true"]) == (len(best[2]), len(best[2] & truth))
    assert (got["precision"], got["recall"]) == pytest.approx(scores(best[2], truth)[:2], abs=1e-12)
    # a listed score
    assert min(abs(float(x["similarity"]) - got["threshold"]) for x in rows) <= 5e-5 + 1e-6


def test_scores_are_class_centre_cosines_of_the_model(run):
    classes_a, ca, _ = run["mine"]["A"]
    classes_b, cb, per_b = run["mine"]["B"]
    sim = cb @ ca.T  # [Cb, Ca]
    # the command embeds each folder in one batch, my_embeddings class by class: another kernel
    # path, so cosines agree to float32 rounding (DIST_TOL), and a choice between cosines that close
    # (the best A class, an image's nearest centre) may fall either way
    for row in run["rows"]:
        i = classes_b.index(row["b_class"])
        near_best = np.flatnonzero(sim[i] >= sim[i].max() - DIST_TOL)
        assert row["a_class"] in {classes_a[j] for j in near_best}
        j = classes_a.index(row["a_class"])
        similarity = float(row["similarity"])  # written with 4 decimals
        assert similarity == pytest.approx(sim[i, j], abs=5e-5 + DIST_TOL)
        per_image = per_b[row["b_class"]] @ ca.T  # [n, Ca]
        votes = per_image.argmax(axis=1) == j
        unsure = np.sort(per_image, axis=1)[:, -2] >= per_image.max(axis=1) - DIST_TOL  # near ties
        low, high = float((votes & ~unsure).mean()), float((votes | unsure).mean())
        agreement = float(row["sample_agreement"])  # written with 3 decimals
        assert low - 5e-4 - 1e-9 <= agreement <= high + 5e-4 + 1e-9


def test_merged_folder_holds_every_image_once(run):
    a, b, merged, t = (
        images_of(run["a"]),
        images_of(run["b"]),
        images_of(run["merged"]),
        run["threshold"],
    )
    shared = {r["b_class"]: r["a_class"] for r in run["rows"] if float(r["similarity"]) >= t}
    assert run["report"]["merge"]["merged_pairs"] == len(shared) > 0

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    expected: dict[str, list[str]] = {
        f"A_{c}": [digest(p) for p in files] for c, files in a.items()
    }
    for c, files in b.items():
        expected.setdefault(f"A_{shared[c]}" if c in shared else f"B_{c}", []).extend(
            digest(p) for p in files
        )
    got = {c: [digest(p) for p in files] for c, files in merged.items()}
    assert sorted(got) == sorted(expected)
    assert {c: sorted(v) for c, v in got.items()} == {c: sorted(v) for c, v in expected.items()}
    total = sum(map(len, a.values())) + sum(map(len, b.values()))
    assert (
        sum(map(len, merged.values()))
        == total
        == sum(1 for p in run["merged"].rglob("*") if p.is_file())
    )
    assert run["report"]["merge"]["classes"] == len(a) + len(b) - len(set(shared))
    for c in shared:  # B's files keep their names behind a B_<class>_ prefix
        names = {p.name for p in merged[f"A_{shared[c]}"]}
        assert {f"B_{c}_{p.name}" for p in b[c]} <= names
