"""The original LFW `pairs.txt` protocol over a folder of aligned crops (Huang et al. 2007, View 2).

pairs.txt: a header "S P" (S sets of P matched + P mismatched pairs; "P" alone for one set, as in
pairsDevTrain.txt), then per set P lines "name n1 n2" (same person) followed by P lines
"name1 n1 name2 n2" (different people). Image n of `name` is `name/name_%04d.jpg` under the image
folder. The loaded set has the `.bin` pair-set shape (images [2N, H, W, 3] interleaved, same [N]),
and the sets are contiguous blocks of 2P pairs, so 10-fold verification with folds = S
(evaluate_lfw_pairs) uses the official folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelab.errors import FacelabError
from facelab.eval.protocols.pairs import evaluate_pair_sets
from facelab.io import read_image

PATTERN = "{name}/{name}_{num:04d}.jpg"


@dataclass(frozen=True)
class LfwPair:
    """One line of pairs.txt: image num1 of name1 against image num2 of name2."""

    name1: str
    num1: int
    name2: str
    num2: int
    same: bool
    line: int  # 1-based line in pairs.txt


def _positive(value: str, path: Path, lineno: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise FacelabError(f"{path}:{lineno}: expected a positive integer, got {value!r}")
    return n


def _pair(fields: list[str], path: Path, lineno: int) -> LfwPair:
    if len(fields) == 3:
        name, a, b = fields
        return LfwPair(
            name, _positive(a, path, lineno), name, _positive(b, path, lineno), True, lineno
        )
    if len(fields) == 4:
        n1, a, n2, b = fields
        if n1 == n2:
            raise FacelabError(f"{path}:{lineno}: a different-person line names {n1!r} twice")
        return LfwPair(
            n1, _positive(a, path, lineno), n2, _positive(b, path, lineno), False, lineno
        )
    raise FacelabError(
        f"{path}:{lineno}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {len(fields)} fields"
    )


def _check_sets(pairs: list[LfwPair], sets: int, per: int, path: Path) -> None:
    if len(pairs) != 2 * sets * per:
        raise FacelabError(
            f"{path}: header says {sets} set(s) x 2 x {per} = {2 * sets * per} pairs, "
            f"found {len(pairs)}"
        )
    for s in range(sets):
        block = pairs[2 * per * s : 2 * per * (s + 1)]
        bad = [p for i, p in enumerate(block) if p.same != (i < per)]
        if bad:
            kind = "different-person" if bad[0].same is False else "same-person"
            raise FacelabError(
                f"{path}:{bad[0].line}: set {s + 1} should hold {per} same-person then "
                f"{per} different-person lines; found a {kind} line here"
            )


def read_lfw_pairs(path: Path) -> tuple[list[LfwPair], int, int]:
    """Parse pairs.txt -> (pairs in file order, number of sets, pairs per class per set)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FacelabError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise FacelabError(f"{path}: not a UTF-8 text file") from None
    rows = [(i, line.split()) for i, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise FacelabError(f"{path}: empty file")
    lineno, head = rows[0]
    if len(head) not in (1, 2):
        raise FacelabError(
            f"{path}:{lineno}: header must be 'sets pairs_per_class' (e.g. '10 300'), got {head}"
        )
    counts = [_positive(v, path, lineno) for v in head]
    sets, per = (1, counts[0]) if len(counts) == 1 else counts
    pairs = [_pair(fields, path, i) for i, fields in rows[1:]]
    _check_sets(pairs, sets, per, path)
    return pairs, sets, per


def load_lfw_pairs(
    pairs_path: Path, image_dir: Path, pattern: str = PATTERN
) -> tuple[np.ndarray, np.ndarray]:
    """pairs.txt over a folder of aligned crops -> (images [2N, H, W, 3] RGB uint8, same [N] bool).

    Images of pair i are 2i and 2i+1 (the `.bin` layout); each distinct image is decoded once.
    `pattern` locates image `num` of `name` under image_dir (default LFW's `name/name_%04d.jpg`).
    """
    pairs, _, _ = read_lfw_pairs(Path(pairs_path))
    return _pair_images(pairs, Path(pairs_path), Path(image_dir), pattern)


def _pair_images(
    pairs: list[LfwPair], pairs_path: Path, image_dir: Path, pattern: str
) -> tuple[np.ndarray, np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    images = []
    for p in pairs:
        for name, num in ((p.name1, p.num1), (p.name2, p.num2)):
            rel = pattern.format(name=name, num=num)
            if rel not in cache:
                file = image_dir / rel
                if not file.is_file():
                    raise FacelabError(f"{pairs_path}:{p.line}: image {file} not found")
                cache[rel] = read_image(file)
            images.append(cache[rel])
    shapes = sorted({im.shape for im in images})
    if len(shapes) != 1:
        raise FacelabError(
            f"{image_dir}: aligned crops have different sizes {shapes}; align them first"
        )
    return np.stack(images), np.array([p.same for p in pairs])


def evaluate_lfw_pairs(
    model: nn.Module,
    data: tuple[Path, Path],
    *,
    preprocess: dict | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    folds: int | None = None,
    pattern: str = PATTERN,
    **kw: object,
) -> dict[str, dict]:
    """{pairs.txt stem: evaluate_pair_sets result} of data = (pairs.txt, aligned image folder).

    folds: the file's S sets by default (View 2: the official 10 folds); kw go to
    evaluate_pair_sets (flip, embed, far_target, threshold_rule, spread, operating_points).
    """
    pairs_path, image_dir = Path(data[0]), Path(data[1])
    pairs, sets, _ = read_lfw_pairs(pairs_path)
    loaded = {pairs_path.stem: _pair_images(pairs, pairs_path, image_dir, pattern)}
    folds = sets if folds is None else folds
    return evaluate_pair_sets(
        model,
        loaded,
        preprocess=preprocess,
        device=device,
        batch_size=batch_size,
        folds=folds,
        **kw,
    )
