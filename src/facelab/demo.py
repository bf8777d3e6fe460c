"""`facelab demo`: synthetic photos -> 5-point alignment -> ArcFace training -> 10-fold
verification.

`make demo` runs it; its recipe is experiments.common.RECIPE, the base of the experiments too.
"""

import logging
import time
from pathlib import Path

import numpy as np

from facelab.config import load_config
from facelab.data.pairsets import load_bin
from facelab.eval.protocols.verification import verify_pairs
from facelab.experiments.common import RECIPE, prepare_synth
from facelab.io import check_writable
from facelab.jsonfile import write_json_atomic
from facelab.model import CHECKPOINT_NAME
from facelab.train.loop import train

log = logging.getLogger(__name__)
FULL = {"identities": 400, "images_per_identity": 20, "pairs": 3000, "overrides": []}
QUICK = {"identities": 12, "images_per_identity": 4, "pairs": 40,
         "overrides": ["train.steps=4", "data.batch_size=8"]}


def raw_pixel_accuracy(images: np.ndarray, same: np.ndarray) -> float:
    """Verification accuracy of raw aligned pixels (per image mean-centred, L2-normalised): the
    floor a model must beat, and the check that the synthetic task is not trivial."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return verify_pairs(x[0::2], x[1::2], same)["accuracy"]


def run_demo(out: Path, data: Path, quick: bool = False) -> dict:
    """Make (or reuse) the synthetic set in `data`, train the demo recipe into `out` from scratch,
    and write metrics.json with the raw-pixel baseline and the wall time beside the run's own."""
    start = time.perf_counter()
    # both folders before the photos are made: a bad --out fails at once
    check_writable(out, "demo output folder")
    check_writable(data, "demo data folder")
    plan = QUICK if quick else FULL
    aligned, pair_files = prepare_synth(data, plan["identities"], plan["images_per_identity"],
                                        plan["pairs"])
    overrides = [f"data.train={aligned}", f"data.val_pairs={pair_files}", f"output={out}",
                 "name=demo"]
    cfg = load_config(RECIPE, overrides + plan["overrides"])
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # the demo always trains afresh
    summary = train(cfg)
    baseline = raw_pixel_accuracy(*load_bin(pair_files[0]))
    summary["baseline"] = {"raw_pixels": {"synth-lfw": baseline}}
    summary["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(out / "metrics.json", summary)
    return summary
