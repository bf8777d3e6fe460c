"""Report plots, each written atomically as PNG or SVG (by the file's suffix).

ROC curves (pair verification: mean over the folds; IJB 1:1: one curve per mode), genuine and
impostor score histograms, CMC curves (1:N), and error-versus-reject curves of a quality score
(Grother & Tabassi 2007, protocols/quality.py). `score_histogram` and `cmc_from_ranks` compute the
numbers a plot draws, so that results can carry them (and be plotted again) without the scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from facelab.io import write_atomic

BINS = 100  # histogram bins over the cosine range [-1, 1]


def save_figure(fig: Figure, path: Path, **savefig: object) -> None:
    """Writes `fig` atomically to `path` (its folder made), in the format of its suffix; `savefig`
    options (dpi, ...) go to matplotlib."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig))


def _figure(n: int) -> tuple[Figure, list]:
    """A figure of n stacked panels (histograms, CMC)."""
    fig = Figure(figsize=(5, 2.6 * n + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(n, 1, i + 1) for i in range(n)]


def _curve_figure() -> tuple[Figure, Axes]:
    """A 5 x 4 inch figure of one panel (ROC, error versus reject)."""
    fig = Figure(figsize=(5, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_roc(results: dict[str, dict], path: Path) -> None:
    """Mean ROC (TPR against FPR, log-x) of every verify_pairs result in one figure."""
    fig, ax = _curve_figure()
    lowest = 1.0
    for name, r in results.items():
        fpr, tpr = np.asarray(r["fpr"]), np.asarray(r["tpr"])
        keep = fpr > 0  # log axis: FPR 0 has no place
        if keep.any():
            lowest = min(lowest, fpr[keep].min())
        ax.plot(fpr[keep], tpr[keep], label=f"{name} ({100 * r['accuracy']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(lowest if lowest < 1.0 else 1e-4, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, which="both", alpha=0.3)
    if results:
        ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_ijb_roc(verification: dict[str, dict], path: Path, title: str = "IJB 1:1") -> None:
    """ROC (TPR against log FPR, 1e-6..1) of each IJB mode."""
    fig, ax = _curve_figure()
    for mode, r in verification.items():
        fpr, tpr = np.asarray(r["fpr"]), np.asarray(r["tpr"])
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], label=f"{mode} (AUC {100 * r['auc']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if verification:
        ax.legend(loc="lower right")
    save_figure(fig, path)


def score_histogram(same: np.ndarray, scores: np.ndarray, bins: int = BINS) -> dict:
    """Counts of genuine (same) and impostor cosine scores on `bins` equal bins over [-1, 1].

    same, scores: [N]. Scores outside [-1, 1] (rounding) fall into the end bins. Returns
    {"edges": [bins + 1], "genuine": [bins], "impostor": [bins]} as plain lists.
    """
    same = np.asarray(same).astype(bool)
    s = np.clip(np.asarray(scores, dtype=np.float64), -1.0, 1.0)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    genuine, _ = np.histogram(s[same], edges)
    impostor, _ = np.histogram(s[~same], edges)
    return {"edges": edges.tolist(), "genuine": genuine.tolist(), "impostor": impostor.tolist()}


def plot_score_histograms(
    hists: Mapping[str, dict], path: Path, xlabel: str = "cosine similarity"
) -> None:
    """One panel per named histogram: genuine and impostor shares (each sums to 1)."""
    fig, axes = _figure(max(1, len(hists)))
    for ax, (name, h) in zip(axes, hists.items(), strict=False):
        edges = np.asarray(h["edges"])
        for kind, colour in (("genuine", "tab:green"), ("impostor", "tab:red")):
            counts = np.asarray(h[kind], dtype=np.float64)  # [bins]
            total = counts.sum()
            share = counts / total if total else counts
            label = f"{kind} ({int(total)})"
            ax.stairs(share, edges, color=colour, fill=True, alpha=0.45, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(-1, 1)
        ax.set_ylabel("fraction of pairs")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel(xlabel)
    save_figure(fig, path)


def cmc_from_ranks(ranks: np.ndarray, max_rank: int) -> dict:
    """CMC curve {"ranks": [1..max_rank], "rate": [...]} from each mated search's mate rank [M]."""
    ranks = np.asarray(ranks)
    k = np.arange(1, max_rank + 1)
    if len(ranks):
        rate = (ranks[None, :] <= k[:, None]).mean(1)  # [K]
    else:
        rate = np.full(max_rank, np.nan)
    return {"ranks": k.tolist(), "rate": rate.tolist()}


def cmc_figure(curves: Mapping[str, dict], title: str = "CMC") -> Figure:
    """Identification rate (%) against rank (1..K) of each named {"ranks", "rate"} curve, the y
    axis exactly 0-100% (a rate is a fraction of searches; markers at 100% are drawn unclipped)."""
    fig, (ax,) = _figure(1)
    for name, c in curves.items():
        ranks: Sequence[int] = c["ranks"]
        rate = 100 * np.asarray(c["rate"], dtype=np.float64)  # [K]; None (no mated search) -> nan
        label = f"{name} (rank-1 {rate[0]:.2f}%)"
        ax.plot(ranks, rate, marker="o", markersize=3, clip_on=False, label=label)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("rank")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("identification rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_cmc(curves: Mapping[str, dict], path: Path, title: str = "CMC") -> None:
    """`cmc_figure` saved to path."""
    save_figure(cmc_figure(curves, title), path)


def plot_error_versus_reject(result: dict, path: Path, label: str = "feature norm") -> None:
    """FNMR against the fraction of pairs rejected (an error_versus_reject result)."""
    fig, ax = _curve_figure()
    ax.plot(result["fractions"], result["fnmr"], marker="o", label=label)
    ax.set_xlabel("fraction of pairs rejected (lowest quality first)")
    threshold = f"threshold {result['threshold']:.3f}"
    ax.set_ylabel(f"FNMR at FMR = {result['fmr_target']:g} ({threshold})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    save_figure(fig, path)
