"""Report plots beyond the ROC: genuine/impostor score histograms and CMC curves (atomic PNG/SVG files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from facelab.io import write_atomic

BINS = 100  # histogram bins over the cosine range [-1, 1]


def score_histogram(same: np.ndarray, scores: np.ndarray, bins: int = BINS) -> dict:
    """Counts of genuine (same) and impostor scores on `bins` equal bins over [-1, 1] (cosine similarity).

    same, scores: [N]. Scores outside [-1, 1] (rounding) fall into the end bins. Returns
    {"edges": [bins + 1], "genuine": [bins], "impostor": [bins]} as plain lists.
    """
    same = np.asarray(same).astype(bool)
    s = np.clip(np.asarray(scores, dtype=np.float64), -1.0, 1.0)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    genuine, _ = np.histogram(s[same], edges)
    impostor, _ = np.histogram(s[~same], edges)
    return {"edges": edges.tolist(), "genuine": genuine.tolist(), "impostor": impostor.tolist()}


def _save(fig: Figure, path: Path) -> None:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt))


def _figure(n: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5, 2.6 * n + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(n, 1, i + 1) for i in range(n)]


def plot_score_histograms(hists: Mapping[str, dict], path: Path, xlabel: str = "cosine similarity") -> None:
    """One panel per named histogram: genuine and impostor densities (each sums to 1 over its bins)."""
    fig, axes = _figure(max(1, len(hists)))
    for ax, (name, h) in zip(axes, hists.items(), strict=False):
        edges = np.asarray(h["edges"])
        for kind, colour in (("genuine", "tab:green"), ("impostor", "tab:red")):
            counts = np.asarray(h[kind], dtype=np.float64)  # [bins]
            total = counts.sum()
            share = counts / total if total else counts
            ax.stairs(share, edges, color=colour, fill=True, alpha=0.45, label=f"{kind} ({int(total)})")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(-1, 1)
        ax.set_ylabel("fraction of pairs")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel(xlabel)
    _save(fig, path)


def cmc_from_ranks(ranks: np.ndarray, max_rank: int) -> dict:
    """CMC curve {"ranks": [1..max_rank], "rate": [...]} from each mated search's rank of its best mate [M]."""
    ranks = np.asarray(ranks)
    k = np.arange(1, max_rank + 1)
    rate = (ranks[None, :] <= k[:, None]).mean(1) if len(ranks) else np.full(max_rank, np.nan)  # [K]
    return {"ranks": k.tolist(), "rate": rate.tolist()}


def cmc_figure(curves: Mapping[str, dict], title: str = "CMC") -> Figure:
    """Identification rate (%) against rank (1..K) of each named {"ranks", "rate"} curve, the y axis
    exactly 0-100% (a rate is a fraction of searches; markers at 100% are drawn unclipped)."""
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
    """`cmc_figure` saved atomically to path (PNG or SVG by its suffix)."""
    _save(cmc_figure(curves, title), path)
