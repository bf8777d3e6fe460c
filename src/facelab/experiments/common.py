"""What every experiment shares: the base recipe, synthetic data, a run per (variant, seed), and the
results table.

A variant is a list of dotted config overrides on a base recipe (`RECIPE`, the demo's, unless the
experiment ships its own). `run_grid` trains every (variant, seed) into `<out>/<variant>/seed<k>`
and reads back its metrics.json; a run whose metrics.json exists is not retrained (a complete run
writes it last), so an interrupted experiment continues where it stopped. `markdown_table` renders
mean ± spread over seeds (population std, ddof 0: with 2 seeds, half the range) and `write_report`
writes it with the command that produced it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facelab import CONFIGS
from facelab.align.folder import MANIFEST, align_folder
from facelab.config import load_config
from facelab.data.synthetic import run_synth
from facelab.errors import FacelabError
from facelab.io import write_atomic
from facelab.model import CHECKPOINT_NAME
from facelab.train.loop import train
from facelab.train.run import reuse_differences
from facelab.train.task import check_names

log = logging.getLogger(__name__)
# The demo recipe (`facelab demo`): tiny backbone, ArcFace, the base of the experiments' variants.
RECIPE = CONFIGS / "demo.yaml"
SETS = ("synth-lfw", "synth-cfp", "synth-lowres")


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def prepare_synth(data: Path, identities: int, images_per_identity: int, pairs: int, seed: int = 0,
                  **synth_kwargs: object) -> tuple[Path, list[str]]:
    """Generate (or reuse) a synthetic set in `data` and its aligned copy.

    Returns (aligned training folder, [synth-lfw.bin, synth-cfp.bin, synth-lowres.bin]). The
    aligned copy is remade whenever the generated set changed (aligned/source.json records the
    synth manifest).
    """
    run_synth(data, identities, images_per_identity, seed=seed, pairs=pairs, **synth_kwargs)
    aligned = data / "aligned"
    source = (data / "synth.json").read_text()
    if not (aligned / MANIFEST).exists() or _read(aligned / "source.json") != source:
        shutil.rmtree(aligned, ignore_errors=True)
        align_folder(data / "images", aligned, data / "landmarks.csv")
        write_atomic(aligned / "source.json", lambda tmp: tmp.write_text(source))
    return aligned, [str(data / "pairs" / f"{name}.bin") for name in SETS]


def train_once(recipe: str | Path, overrides: Sequence[str], out: Path) -> dict:
    """Train `recipe` + `overrides` into `out` (output= is set here) and return its metrics.json.
    A complete run (metrics.json present) trained with the same config (train.run.REUSABLE keys
    aside) is read back, not retrained; one trained otherwise is refused, naming the key, so that a
    changed budget never passes old runs off as new; an interrupted run is resumed."""
    cfg = load_config(recipe, [*overrides, f"output={out}", f"name={out.parent.name}-{out.name}"])
    metrics = out / "metrics.json"
    if metrics.exists():
        changed = reuse_differences(out, cfg)
        if changed:
            raise FacelabError(f"{out}: finished with another config ({'; '.join(changed[:3])}); "
                               "remove the folder or choose another output folder")
        log.info("%s: complete, reusing its metrics", out)
        return json.loads(metrics.read_text())
    summary = train(cfg, resume=(out / CHECKPOINT_NAME).exists())
    if not summary["train"].get("complete", True):
        raise FacelabError(f"{out}: training stopped before its last step")
    return summary


def check_grid(recipe: str | Path, variants: dict[str, Sequence[str]], seeds: Sequence[int],
               common: Sequence[str] = ()) -> None:
    """Build and check the config of every (variant, seed) before any data is made or any run
    trained, so a bad budget (--steps 0) or override fails at once, naming the variant. `common`
    may hold placeholder data paths: paths are not opened here."""
    if not variants or not seeds:
        raise FacelabError("experiment: needs at least one variant and one seed")
    for name, overrides in variants.items():
        for seed in seeds:
            try:
                overrides_here = [*common, f"seed={seed}", *overrides, "output=unused"]
                check_names(load_config(recipe, overrides_here))
            except FacelabError as e:
                raise FacelabError(f"experiment variant {name!r}: {e}") from None


def run_grid(recipe: str | Path, variants: dict[str, Sequence[str]], seeds: Sequence[int],
             out: Path, common: Sequence[str] = ()) -> dict[str, dict[int, dict]]:
    """Train every variant for every seed: {variant: {seed: metrics}}. `common` overrides apply to
    all (data paths, budget); a variant's own overrides come after them and win."""
    check_grid(recipe, variants, seeds, common)
    results: dict[str, dict[int, dict]] = {}
    for name, overrides in variants.items():
        for seed in seeds:
            run = out / name / f"seed{seed}"
            log.info("experiment run %s", run)
            metrics = train_once(recipe, [*common, f"seed={seed}", *overrides], run)
            results.setdefault(name, {})[seed] = metrics
    return results


def accuracy(metrics: dict, pair_set: str) -> float:
    """Verification accuracy (fraction) of one pair set from a run's metrics.json."""
    try:
        return float(metrics["pairs"][pair_set]["accuracy"])
    except KeyError:
        raise FacelabError(f"run metrics hold no accuracy for pair set {pair_set!r}") from None


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of the values."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std())


def summarise(results: dict[str, dict[int, dict]],
              sets: Sequence[str] = SETS) -> dict[str, dict[str, list]]:
    """{variant: {set: [accuracy per seed]}} from run_grid's output."""
    return {name: {s: [accuracy(m, s) for m in runs.values()] for s in sets}
            for name, runs in results.items()}


def format_cell(values: Sequence[float]) -> str:
    mean, spread = mean_spread(values)
    return f"{100 * mean:.2f} ± {100 * spread:.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


def markdown_table(summary: dict[str, dict[str, list]], sets: Sequence[str] = SETS,
                   extra: dict[str, dict[str, str]] | None = None) -> str:
    """Rows = variants, columns = accuracy (%) per set as mean ± spread, then any `extra` columns
    ({variant: {column: text}})."""
    extra = extra or {}
    extra_cols = list(dict.fromkeys(c for cols in extra.values() for c in cols))
    head = ["variant", *[f"{s} (%)" for s in sets], *extra_cols]
    rows = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, per_set in summary.items():
        cells = [format_cell(per_set[s]) for s in sets]
        cells += [extra.get(name, {}).get(c, "") for c in extra_cols]
        rows.append("| " + " | ".join([f"`{name}`", *cells]) + " |")
    return "\n".join(rows)


# a page's hand-written part starts at this line; an experiment that rewrites the page keeps it
HAND_WRITTEN = "<!-- written by hand from here on: kept when the experiment rewrites this page -->"


def write_report(path: Path, title: str, command: str, intro: str, table: str,
                 notes: str = "") -> None:
    """A markdown page: title, what was run (the exact command), the table, then notes; written
    atomically. Whatever the existing page holds from its HAND_WRITTEN line on is kept at the
    end."""
    text = f"# {title}\n\n{intro.strip()}\n\nProduced by:\n\n```\n{command}\n```\n\n{table}\n"
    if notes.strip():
        text += f"\n{notes.strip()}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if HAND_WRITTEN in old:
        text += "\n" + old[old.index(HAND_WRITTEN):]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
