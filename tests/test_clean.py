"""facelab.clean: dominant sub-centre cleaning against a loop transcription of the rule (Sub-center ArcFace,
METHODS.md), on a hand-built case and through `facelab clean` on a small folder with a made-up checkpoint."""

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch

from facelab.clean import assign_subcenters, clean_folder, precision_recall
from facelab.cli import main
from facelab.config import config_from_dict, config_to_dict
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.io import read_image
from facelab.model import build_model, save_checkpoint


def brute_force(weight, k, emb, labels, max_angle):
    """Per image: angle (degrees) to its class's dominant sub-centre and kept?, by plain loops."""
    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    def cos(a, b):
        return max(-1.0, min(1.0, sum(p * q for p, q in zip(unit(a), unit(b), strict=True))))

    classes = len(weight) // k
    nearest = []
    for x, c in zip(emb, labels, strict=True):
        sims = [cos(x, weight[c * k + j]) for j in range(k)]
        nearest.append(sims.index(max(sims)))  # the first maximum
    dominant = []
    for c in range(classes):
        counts = [sum(1 for n, lab in zip(nearest, labels, strict=True) if lab == c and n == j) for j in range(k)]
        dominant.append(counts.index(max(counts)))
    angles = [math.degrees(math.acos(cos(x, weight[c * k + dominant[c]]))) for x, c in zip(emb, labels, strict=True)]
    return angles, [a <= max_angle for a in angles], dominant


def test_hand_built_case():
    # class 0: sub-centres e0, e1, e2; class 1: e3, -e3, e0. Three images near e0 and one at e1 in class 0:
    # e0 is dominant, the e1 image is 90° away. Class 1: two at e3, one at -e3 (180°).
    e = np.eye(4)
    weight = np.stack([e[0], e[1], e[2], e[3], -e[3], e[0]]) * 3.0  # [C·K, d], norms do not matter
    emb = np.stack([e[0], e[0] + 0.1 * e[1], e[0] + 0.2 * e[2], e[1], e[3], e[3] + 0.3 * e[2], -e[3]])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    got = assign_subcenters(weight, 3, emb, labels)
    assert got["dominant"].tolist() == [0, 0]
    assert got["counts"].tolist() == [[3, 1, 0], [2, 1, 0]]
    expected = [0.0, math.degrees(math.atan(0.1)), math.degrees(math.atan(0.2)), 90.0, 0.0,
                math.degrees(math.atan(0.3)), 180.0]
    np.testing.assert_allclose(got["angle"], expected, atol=1e-6)
    angles, keep, dominant = brute_force(weight.tolist(), 3, emb.tolist(), labels.tolist(), 75.0)
    np.testing.assert_allclose(got["angle"], angles, atol=1e-9)
    assert (got["angle"] <= 75.0).tolist() == keep == [True, True, True, False, True, True, False]


def test_random_case_matches_the_loops():
    rng = np.random.default_rng(0)
    k, classes, d = 3, 5, 8
    weight = rng.normal(size=(classes * k, d))
    labels = rng.integers(0, classes, 60)
    emb = weight.reshape(classes, k, d)[labels, rng.integers(0, k, 60)] + rng.normal(0, 0.8, (60, d))
    got = assign_subcenters(weight, k, emb, labels)
    angles, keep, dominant = brute_force(weight.tolist(), k, emb.tolist(), labels.tolist(), 60.0)
    assert got["dominant"].tolist() == dominant
    np.testing.assert_allclose(got["angle"], angles, atol=1e-9)
    assert (got["angle"] <= 60.0).tolist() == keep


def test_precision_recall_counts_only_noisy_images_present():
    images = ["a/1.png", "a/2.png", "b/1.png", "b/x-3.png"]
    noisy = {("b", "x-3"), ("a", "2"), ("c", "9")}  # c/9 is not in the folder
    pr = precision_recall(["a/2.png", "b/1.png"], images, noisy)
    assert pr == {"noisy": 2, "dropped": 2, "dropped_noisy": 1, "precision": 0.5, "recall": 0.5}


def make_run(tmp_path, sub_centers=3, classes=4, per_class=5):
    """A folder of smooth random identities, a tiny model and a checkpoint with random sub-centres."""
    rng = np.random.default_rng(1)
    data = tmp_path / "synth" / "aligned"
    for c in range(classes):
        base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112))
        for n in range(per_class):
            path = data / f"id{c}" / f"{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))
    margin = "subcenter_arcface" if sub_centers > 1 else "arcface"
    cfg = config_from_dict({"model": {"backbone": "tiny", "embedding_size": 16, "kwargs": {"width": 4}},
                            "head": {"margin": margin, "sub_centers": sub_centers}})
    torch.manual_seed(0)
    model = build_model(cfg)
    weight = torch.randn(classes * sub_centers, 16)
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", {
        "model": model.state_dict(), "head": {"classifier.weight": weight}, "config": config_to_dict(cfg),
        "preprocess": {"size": 112}, "num_classes": classes})
    return data, model, weight.numpy()


def test_cli_cleans_the_folder_like_the_loops(tmp_path, capsys):
    data, model, weight = make_run(tmp_path)
    paths = sorted(data.rglob("*.png"))
    names = [p.relative_to(data).as_posix() for p in paths]
    labels = [int(p.parent.name[2:]) for p in paths]
    emb = embed_images(model.eval(), np.stack([read_image(p) for p in paths]), preprocess={"size": 112})
    angles, keep, _ = brute_force(weight.tolist(), 3, emb.tolist(), labels, 90.0)
    limit = float(np.median(angles))  # about half the images dropped
    angles, keep, _ = brute_force(weight.tolist(), 3, emb.tolist(), labels, limit)
    noisy = [names[0], names[7], names[13]]
    (data.parent / "label_noise.csv").write_text("image,true_identity,assigned_identity\n" +
                                                 "".join(f"{n.replace('.png', '.jpg')},0,1\n" for n in noisy))
    out = tmp_path / "clean"
    assert main(["clean", str(tmp_path / "run"), "--data", str(data), "--out", str(out), "--angle", str(limit)]) == 0
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert kept == [n for n, k in zip(names, keep, strict=True) if k] and 0 < len(kept) < len(names)
    with (out / "dropped.csv").open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows] == [n for n, k in zip(names, keep, strict=True) if not k]
    np.testing.assert_allclose([float(r[2]) for r in rows], [a for a, k in zip(angles, keep, strict=True) if not k],
                               atol=0.01)
    report = json.loads((out / "clean.json").read_text())
    assert report["counts"]["kept"] == len(kept) and report["sub_centers"] == 3
    dropped_noisy = sum(not keep[names.index(n)] for n in noisy)
    assert report["truth"]["dropped_noisy"] == dropped_noisy and report["truth"]["noisy"] == 3
    assert report["truth"]["recall"] == pytest.approx(dropped_noisy / 3)
    assert "kept" in capsys.readouterr().out
    assert main(["clean", str(tmp_path / "run"), "--data", str(data), "--out", str(out), "--angle", "180"]) == 0
    assert len(list(out.rglob("*.png"))) == len(names)  # an earlier clean output is replaced whole
    assert not list(tmp_path.glob(".clean.*"))  # no temporary folder left behind


def test_refuses_one_centre_per_class_and_a_foreign_folder(tmp_path, capsys):
    data, _, _ = make_run(tmp_path, sub_centers=1)
    assert main(["clean", str(tmp_path / "run"), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "K=1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("mine")
    with pytest.raises(FacelabError, match="not a clean output"):
        clean_folder(tmp_path / "run", data, tmp_path / "taken")


def test_a_failure_while_writing_leaves_no_output(tmp_path, monkeypatch):
    import facelab.clean as clean

    data, _, _ = make_run(tmp_path)
    calls = []

    def failing_link(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        clean.shutil.copy2(src, dst.parent.mkdir(parents=True, exist_ok=True) or dst)

    monkeypatch.setattr(clean, "_link", failing_link)
    with pytest.raises(OSError, match="disk full"):
        clean_folder(tmp_path / "run", data, tmp_path / "out", angle=180.0)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_unwritable_output_fails_before_loading_the_run(tmp_path, monkeypatch, capsys):
    import facelab.clean as clean

    data, _, _ = make_run(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(clean, "load_checkpoint", must_not_run)
    monkeypatch.setattr(clean, "embed_folder", must_not_run)
    (tmp_path / "afile").write_text("a regular file")
    out = tmp_path / "afile" / "clean"
    assert main(["clean", str(tmp_path / "run"), "--data", str(data), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("facelab: error:"), err
    assert f"{tmp_path / 'afile'}: folder of the clean output clean is not writable" in err[0]
    assert captured.out == ""
