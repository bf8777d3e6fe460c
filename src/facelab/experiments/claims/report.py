"""docs/claims.md from the claims' results: a summary table, then one section per claim (the
paper's statement, the measurement, the rule fixed before running, the figures and the verdict).

Each measured claim's Result is kept as `<root>/<claim>/result.json`, so that `--only NAME` updates
one section and the page still holds every claim measured so far.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from facelab.errors import FacelabError
from facelab.experiments.claims.base import Result
from facelab.io import write_atomic
from facelab.jsonfile import strict_json

RESULT = "result.json"


def save_result(root: Path, result: Result) -> Path:
    path = root / result.name / RESULT
    path.parent.mkdir(parents=True, exist_ok=True)
    text = strict_json(dataclasses.asdict(result))
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


def load_results(root: Path, names: list[str]) -> dict[str, Result]:
    """The saved Result of every claim in `names` that has one."""
    out = {}
    for name in names:
        path = root / name / RESULT
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
            out[name] = Result(**{**data, "figures": [tuple(f) for f in data["figures"]]})
        except (ValueError, TypeError, KeyError) as e:
            raise FacelabError(f"{path}: not a claim result ({e}); delete it to measure again") \
                from None
    return out


def _section(r: Result, doc: Path) -> str:
    lines = [f"## {r.title}", "", f"**Verdict: {r.verdict}.**", "",
             f"**Paper.** {r.paper}", "", f"**Measurement.** {r.measurement}", "",
             f"**Rule (fixed before running).** {r.rule}", "", r.table.strip(), ""]
    for png, caption in r.figures:
        rel = os.path.relpath(png, doc.parent)
        lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    if r.notes.strip():
        lines += [r.notes.strip(), ""]
    lines += [_wall_time(r), ""]
    return "\n".join(lines)


def _wall_time(r: Result) -> str:
    if r.trained == 0:
        return (f"Wall time: {r.seconds / 60:.1f} min to measure it from runs trained before it "
                "(by another claim or an earlier call).")
    return (f"Wall time: {r.seconds / 60:.1f} min for the call that trained its {r.trained} runs "
            "and measured them (a later call measures finished runs again without retraining).")


def write_claims(doc: Path, results: dict[str, Result], order: list[str], header: str) -> None:
    """The page: `header` (command, machine, wall time), the summary, the sections in `order`."""
    rows = ["| claim | verdict |", "| --- | --- |"]
    rows += [f"| [{results[n].title}](#{_anchor(results[n].title)}) | {results[n].verdict} |"
             for n in order if n in results]
    missing = [n for n in order if n not in results]
    parts = ["# Claims measured on synthetic faces", "", header.strip(), "", *rows, ""]
    if missing:
        parts += [f"Not measured yet: {', '.join(missing)}.", ""]
    parts += [_section(results[n], doc) for n in order if n in results]
    text = "\n".join(parts)
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(doc, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, spaces to dashes, punctuation dropped."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")
