"""Teacher and student similarity histograms before and after DDL training (Huang et al. 2020,
Fig. 1/5).

A fixed set of identities is held out of training (`distill.plot_identities`); their easy and hard
images are embedded at step 0 and after the last step. Per branch: positive-pair cosines and each
image's hardest negative cosine, the quantities the DDL loss compares. Output in the run folder:
ddl_before.json (step-0 similarities, so a resumed run can still draw them), ddl_after.json and
ddl_histograms.png.
"""

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facelab.eval.embed import embed_images
from facelab.io import write_atomic
from facelab.jsonfile import write_json_atomic
from facelab.losses.ddl import branch_similarities

BEFORE, AFTER, PNG = "ddl_before.json", "ddl_after.json", "ddl_histograms.png"
PER_BRANCH = 5  # at most this many easy and this many hard images per held-out identity
SERIES = (("teacher", "pos"), ("teacher", "neg"), ("student", "pos"), ("student", "neg"))


def plot_items(pools: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, bool, int, int]]:
    """Sampler-style items (index, flip, group, seed) of the held-out identities' easy then hard
    images."""
    items = []
    for easy, hard in pools:
        e = (
            easy[:PER_BRANCH]
            if not np.array_equal(easy, hard)
            else easy[: min(PER_BRANCH, len(easy) // 2)]
        )
        h = np.setdiff1d(hard, e)[:PER_BRANCH]
        items += [(int(i), False, 0, int(i)) for i in e] + [(int(i), False, 1, int(i)) for i in h]
    return items


def similarities(model: torch.nn.Module, dataset, items: list, preprocess: dict,
                 device: torch.device) -> dict[str, list[float]]:
    """{"teacher_pos", "teacher_neg", "student_pos", "student_neg": cosines} of the items'
    embeddings."""
    batch = [dataset[item] for item in items]
    images = np.stack([b[0].permute(1, 2, 0).numpy() for b in batch])  # [N, H, W, 3] uint8
    labels = torch.tensor([b[1] for b in batch])
    groups = torch.tensor([it[2] for it in items])
    emb = torch.from_numpy(
        embed_images(model, images, flip=False, preprocess=preprocess, device=device)
    )
    out = {}
    for branch, g in (("teacher", 0), ("student", 1)):
        pos, neg = branch_similarities(emb[groups == g].double(), labels[groups == g])
        out[f"{branch}_pos"], out[f"{branch}_neg"] = pos.tolist(), neg.tolist()
    return out


def save_before(run: Path, sims: dict[str, list[float]]) -> None:
    write_json_atomic(Path(run) / BEFORE, sims)


def plot_histograms(run: Path, after: dict[str, list[float]]) -> Path:
    """ddl_histograms.png: step-0 (from ddl_before.json, if present) and final histograms side by
    side; the final similarities are kept in ddl_after.json."""
    run = Path(run)
    write_json_atomic(run / AFTER, after)
    panels = {"after training": after}
    if (run / BEFORE).exists():
        panels = {"before training (step 0)": json.loads((run / BEFORE).read_text()), **panels}
    fig = Figure(figsize=(5 * len(panels), 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    edges = np.linspace(-0.4, 1.0, 57)
    colours = ("tab:blue", "tab:cyan", "tab:red", "tab:orange")
    for ax, (title, sims) in zip(axes, panels.items(), strict=True):
        for (branch, kind), colour in zip(SERIES, colours, strict=True):
            values = np.asarray(sims[f"{branch}_{kind}"])
            if len(values):
                label = f"{branch} {kind} (n={len(values)}, mean {values.mean():.2f})"
            else:
                label = branch
            ax.hist(values, bins=edges, density=True, histtype="step", color=colour, lw=1.5,
                    ls="-" if kind == "pos" else "--", label=label)
        ax.set_title(title)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7, loc="upper left")
    path = run / PNG
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
