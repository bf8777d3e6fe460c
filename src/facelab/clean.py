"""`facelab clean`: dominant sub-centre data cleaning with a trained Sub-center ArcFace run.

Sub-center ArcFace (Deng et al. 2020, ECCV, Sec. 3 "dominant and non-dominant sub-classes";
METHODS.md, `subcenter_arcface` row): embed every image of the aligned training folder
(f(x) + f(flip x), normalised, as evaluation does), give each image of class c the nearest of c's K
sub-centres (highest cosine, lowest index on ties), call the sub-centre with the most images the
dominant one (lowest index on ties), and drop the images whose angle to it exceeds `angle` degrees
(75 in the paper). Then retrain with K = 1.

Output folder OUT (built beside it in a temporary folder and renamed at the end, never
half-written):
  <class>/<image>   hard links (copies across file systems) of the kept images, same layout as DATA
  clean.json        counts, angle, per-class statistics, precision/recall of the dropped set when a
                    truth file is given or found (DATA/../label_noise.csv, from
                    `facelab synth --label-noise`)
  dropped.csv       image, class, angle to the dominant sub-centre (degrees), reason
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from facelab.errors import FacelabError
from facelab.eval.embed import embed_folder
from facelab.io import check_output_folder
from facelab.jsonfile import write_json_atomic
from facelab.model import load_checkpoint, load_model

log = logging.getLogger(__name__)
REPORT, DROPPED = "clean.json", "dropped.csv"


def assign_subcenters(weight: np.ndarray, k: int, emb: np.ndarray,
                      labels: np.ndarray) -> dict[str, np.ndarray]:
    """Nearest own sub-centre of each image, dominant sub-centre of each class, angle to it.

    weight [C·K, d] (row c·K + j: sub-centre j of class c, the Classifier layout), emb [N, d],
    labels [N]. Returns nearest [N], counts [C, K] (images per sub-centre), dominant [C], angle [N]
    in degrees.
    """
    w = weight.astype(np.float64).reshape(-1, k, weight.shape[1])  # [C, K, d]
    w /= np.linalg.norm(w, axis=2, keepdims=True)
    x = emb.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # [N, d]
    # [N, K]: cosines to the image's own class's sub-centres
    cos = np.clip(np.einsum("nd,nkd->nk", x, w[labels]), -1.0, 1.0)
    nearest = cos.argmax(axis=1)  # [N]; the first maximum
    counts = np.zeros((w.shape[0], k), dtype=np.int64)  # [C, K]
    np.add.at(counts, (labels, nearest), 1)
    dominant = counts.argmax(axis=1)  # [C]
    angle = np.degrees(np.arccos(cos[np.arange(len(labels)), dominant[labels]]))  # [N]
    return {"nearest": nearest, "counts": counts, "dominant": dominant, "angle": angle}


def load_subcenter_run(run: str | Path) -> tuple[torch.nn.Module, dict, np.ndarray, int, int]:
    """(embedding model, preprocess, centres [C·K, d], K, C) of a run; a head with K = 1 is
    refused."""
    ckpt = load_checkpoint(run)
    weight = ckpt.get("head", {}).get("classifier.weight")
    classes = ckpt.get("num_classes")
    if weight is None or not classes:
        raise FacelabError(f"{run}: the checkpoint holds no classifier weight and class count to "
                           "clean with")
    k = weight.shape[0] // int(classes)
    margin = ckpt["config"].get("head", {}).get("margin")
    if k < 2:
        raise FacelabError(f"{run}: head '{margin}' has one centre per class (K=1); cleaning needs "
                           "sub-centres (K >= 2): train e.g. "
                           "`facelab train heads/subcenter_arcface`")
    model, preprocess = load_model(run)
    return model, preprocess, weight.float().numpy(), k, int(classes)


def read_truth(path: Path) -> set[tuple[str, str]]:
    """The relabelled images of a label_noise.csv as {(folder, file stem)} (the aligned copy may
    change suffix)."""
    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise FacelabError(f"{path}: cannot read the label-noise truth ({e.strerror})") from None
    if not rows or rows[0][:1] != ["image"]:
        raise FacelabError(f"{path}: header must start with 'image' "
                           "(image,true_identity,assigned_identity)")
    return {_key(row[0]) for row in rows[1:] if row}


def _key(image: str) -> tuple[str, str]:
    p = Path(image)
    return p.parent.name, p.stem


def precision_recall(dropped: list[str], images: list[str], noisy: set[tuple[str, str]]) -> dict:
    """Precision and recall of the dropped images (paths `<class>/<file>`) as a detector of the
    noisy ones (only noisy images present in the folder count: an image the aligner skipped cannot
    be found)."""
    present = {_key(i) for i in images} & noisy
    hits = sum(_key(i) in present for i in dropped)
    return {"noisy": len(present), "dropped": len(dropped), "dropped_noisy": hits,
            "precision": hits / len(dropped) if dropped else None,
            "recall": hits / len(present) if present else None}


def clean_folder(run: str | Path, data: str | Path, out: str | Path, angle: float = 75.0,
                 truth: str | Path | None = None, batch_size: int = 256) -> dict:
    """Clean `data` with the sub-centres of `run` into `out` (module docstring); returns
    clean.json's content. The arguments and out's folder are checked before the run is loaded."""
    data, out = Path(data), Path(out)
    if not (isinstance(angle, (int, float)) and 0.0 <= angle <= 180.0):
        raise FacelabError(f"clean: --angle must be in [0, 180] degrees, got {angle!r}")
    if out.resolve() == data.resolve():
        raise FacelabError(f"clean: --out {out} must differ from --data")
    if out.exists() and not (out / REPORT).is_file():
        raise FacelabError(f"{out}: exists and holds no {REPORT}: not a clean output; choose a new "
                           "folder")
    check_output_folder(out.parent, f"folder of the clean output {out.name}")  # built beside out
    if truth is None and (data.parent / "label_noise.csv").is_file():
        truth = data.parent / "label_noise.csv"
    model, preprocess, weight, k, num_classes = load_subcenter_run(run)
    emb, labels, classes, paths = embed_folder(model, preprocess, data, batch_size)
    if len(classes) != num_classes or emb.shape[1] != weight.shape[1]:
        raise FacelabError(f"{data}: {len(classes)} classes of {emb.shape[1]}-d embeddings, the "
                           f"run's head has {num_classes} classes of {weight.shape[1]}-d centres: "
                           "clean the folder it trained on")
    found = assign_subcenters(weight, k, emb, labels)
    keep = found["angle"] <= angle  # [N]
    images = [p.relative_to(data).as_posix() for p in paths]
    report = _report(run, data, out, angle, k, classes, labels, keep, found)
    if truth is not None:
        dropped = [i for i, kept in zip(images, keep, strict=True) if not kept]
        report["truth"] = {"file": str(truth),
                           **precision_recall(dropped, images, read_truth(Path(truth)))}
    reason = f"angle to dominant sub-centre > {angle:g}"
    rows = [[images[i], classes[labels[i]], f"{found['angle'][i]:.2f}", reason]
            for i in np.flatnonzero(~keep)]
    _write_output(out, [(paths[i], images[i]) for i in np.flatnonzero(keep)], report, rows)
    log.info("clean: kept %d of %d images, dropped %d", int(keep.sum()), len(keep),
             int((~keep).sum()))
    return report


def _report(run, data, out, angle, k, classes, labels, keep, found) -> dict:
    per_class = []
    for c, name in enumerate(classes):
        mine = labels == c
        per_class.append({"class": name, "images": int(mine.sum()),
                          "kept": int((keep & mine).sum()), "dominant": int(found["dominant"][c]),
                          "per_subcenter": found["counts"][c].tolist()})
    counts = {"images": int(len(keep)), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
              "classes": len(classes), "emptied_classes": sum(c["kept"] == 0 for c in per_class)}
    return {"run": str(run), "data": str(data), "out": str(out), "angle": float(angle),
            "sub_centers": k, "counts": counts, "truth": None, "classes": per_class}


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(src, dst)


def _write_output(out: Path, kept: list[tuple[Path, str]], report: dict,
                  dropped_rows: list[list]) -> None:
    """Build the cleaned folder beside `out` and rename it into place (an old clean output is
    replaced)."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for src, rel in kept:
            _link(src, tmp / rel)
        buf = io.StringIO()
        header = ["image", "class", "angle", "reason"]
        csv.writer(buf, lineterminator="\n").writerows([header, *dropped_rows])
        (tmp / DROPPED).write_text(buf.getvalue())
        write_json_atomic(tmp / REPORT, report)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

