"""Identities shared by two training sets (the overlap DAIL tolerates, arXiv 2101.05419), merged.

Both image folders are embedded with a trained model (flip-fused, L2-normalised). Class centre =
mean of the normalised embeddings of a class, normalised again. For every class b of B, its best A
class a*(b) = argmax_a cos(centre_b, centre_a) is the candidate; the candidates ranked by that
cosine go to candidates.csv, with a sample-level check: the fraction of b's images whose nearest A
centre is a*(b). A candidate is called shared when its cosine >= threshold. With a ground-truth CSV
(a_class, b_class columns, e.g. the overlap.csv of `facelab synth --datasets 2`), precision and
recall at the threshold and the threshold of the best F1 are reported in overlap.json (`facelab
overlap`: facelab.eval.run.find_overlap). `merge_folders` writes one folder in which every shared
pair is one class.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.io import check_output_folder, write_atomic


def class_centres(feats: np.ndarray, names: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(sorted class names, unit centres [C, d]) of normalised embeddings feats [N, d], a class
    name per row."""
    classes = sorted(set(names.tolist()))
    centres = np.stack([feats[names == c].mean(axis=0) for c in classes])  # [C, d]
    return classes, centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)


def _centred(feats: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = feats - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def candidates(
    feats_a: np.ndarray,
    names_a: np.ndarray,
    feats_b: np.ndarray,
    names_b: np.ndarray,
    centre: bool = False,
) -> list[dict]:
    """One row per class of B: its best A class, their centre cosine, the sample agreement; best
    first.

    centre=True subtracts each dataset's mean embedding (and renormalises) first: a domain shift
    moves a whole dataset, which otherwise makes a few A classes the nearest of most B classes
    (hubs)."""
    if centre:
        feats_a, feats_b = (
            _centred(feats_a, feats_a.mean(axis=0)),
            _centred(feats_b, feats_b.mean(axis=0)),
        )
    classes_a, ca = class_centres(feats_a, names_a)
    classes_b, cb = class_centres(feats_b, names_b)
    sim = cb @ ca.T  # [Cb, Ca]
    nearest = (feats_b @ ca.T).argmax(axis=1)  # [Nb] nearest A centre of every B image
    rows = []
    for i, b in enumerate(classes_b):
        j = int(sim[i].argmax())
        mine = names_b == b
        rows.append(
            {
                "b_class": b,
                "a_class": classes_a[j],
                "similarity": float(sim[i, j]),
                "sample_agreement": float((nearest[mine] == j).mean()),
            }
        )
    return sorted(rows, key=lambda r: -r["similarity"])


def read_truth(
    path: Path,
    datasets: tuple[str, str] | None = None,
    a: Path | None = None,
    b: Path | None = None,
) -> set[tuple[str, str]]:
    """{(a_class, b_class)} from a CSV with those columns. A truth file of several datasets (columns
    a_dataset, b_dataset, as `facelab synth --datasets N` writes) keeps only the rows of the two
    datasets compared: `datasets` (name of A's, name of B's), else the names found in the paths of
    folders `a` and `b` (e.g. OUT/A/aligned is dataset A); rows listed the other way round are
    swapped. A file of one pair of datasets is taken whole."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise FacelabError(f"{path}: cannot read the overlap truth ({e.strerror})") from None
    if rows and not {"a_class", "b_class"} <= set(rows[0]):
        raise FacelabError(
            f"{path}: the overlap truth needs a_class and b_class columns, has {list(rows[0])}"
        )
    named = bool(rows) and {"a_dataset", "b_dataset"} <= set(rows[0])
    kinds = {(r["a_dataset"], r["b_dataset"]) for r in rows} if named else set()
    if not named or (datasets is None and len(kinds) == 1):  # one pair of datasets: every row
        return {(r["a_class"], r["b_class"]) for r in rows}
    names = {r["a_dataset"] for r in rows} | {r["b_dataset"] for r in rows}
    da, db = datasets or (_dataset_in_path(a, names, path), _dataset_in_path(b, names, path))
    pairs = {
        (r["a_class"], r["b_class"]) for r in rows if (r["a_dataset"], r["b_dataset"]) == (da, db)
    }
    return pairs | {
        (r["b_class"], r["a_class"]) for r in rows if (r["a_dataset"], r["b_dataset"]) == (db, da)
    }


def _dataset_in_path(folder: Path | None, names: set[str], truth: Path) -> str:
    """The dataset name of `truth` that is a component of `folder`'s path (nearest its end)."""
    for part in reversed(Path(folder).resolve().parts if folder is not None else ()):
        if part in names:
            return part
    raise FacelabError(
        f"{truth}: holds datasets {sorted(names)}; cannot tell which is {folder} from its path "
        "(name them with --truth-datasets A B)"
    )


def precision_recall(rows: list[dict], truth: set[tuple[str, str]], threshold: float) -> dict:
    """Precision, recall and F1 of the candidates with similarity >= threshold."""
    called = {(r["a_class"], r["b_class"]) for r in rows if r["similarity"] >= threshold}
    hits = len(called & truth)
    p = hits / len(called) if called else 1.0
    r = hits / len(truth) if truth else 1.0
    return {
        "threshold": threshold,
        "called": len(called),
        "true": hits,
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
    }


def best_f1(rows: list[dict], truth: set[tuple[str, str]]) -> dict:
    """precision_recall at the candidate similarity with the highest F1 (ties: the higher
    threshold); with no threshold above F1 0 (no true pair among the candidates), the result of
    calling nothing, threshold None."""
    best = {**precision_recall(rows, truth, float("inf")), "threshold": None}
    for t in sorted({r["similarity"] for r in rows}, reverse=True):
        result = precision_recall(rows, truth, t)
        if result["f1"] > best["f1"]:
            best = result
    return best


def merge_folders(a: Path, b: Path, rows: list[dict], threshold: float, out: Path) -> dict:
    """Copy A's classes as A_<class> and B's as B_<class>, except that a B class called shared with
    A class a goes into A_<a> (file names prefixed B_<class>_). Written to a temporary folder, then
    renamed."""
    check_merge_target(out)
    shared = {r["b_class"]: r["a_class"] for r in rows if r["similarity"] >= threshold}
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for cls in sorted(p for p in a.iterdir() if p.is_dir()):
        shutil.copytree(cls, tmp / f"A_{cls.name}")
    for cls in sorted(p for p in b.iterdir() if p.is_dir()):
        target = tmp / (f"A_{shared[cls.name]}" if cls.name in shared else f"B_{cls.name}")
        target.mkdir(parents=True, exist_ok=True)
        prefix = f"B_{cls.name}_" if cls.name in shared else ""
        for f in sorted(cls.iterdir()):
            shutil.copy2(f, target / f"{prefix}{f.name}")
    tmp.rename(out)
    return {"merged_pairs": len(shared), "classes": sum(1 for p in out.iterdir() if p.is_dir())}


def check_merge_target(out: Path) -> None:
    """The merged folder must be new and its parent writable (the set is built beside it)."""
    if out.exists():
        raise FacelabError(f"{out}: exists; choose a new folder for the merged set")
    check_output_folder(out.parent, f"folder of the merged set {out.name}")


def write_candidates(path: Path, rows: list[dict]) -> None:
    """candidates.csv: one row per candidate (b_class, a_class, similarity, sample_agreement)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(
                f, ["b_class", "a_class", "similarity", "sample_agreement"], lineterminator="\n"
            )
            w.writeheader()
            w.writerows(
                {
                    **r,
                    "similarity": f"{r['similarity']:.6f}",
                    "sample_agreement": f"{r['sample_agreement']:.3f}",
                }
                for r in rows
            )

    write_atomic(path, write)
