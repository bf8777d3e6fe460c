"""The smoke test of `facelab experiment claims --quick`: every claim of the registry measured at
the quick budget (tiny data, 3 steps, one seed) into a temporary folder, and the page written with
a section, a rule, a table and a verdict for each; then `--report-only` rewrites the page from the
saved results without training."""

import argparse
import re

from facelab.experiments.claims import CLAIMS
from facelab.experiments.claims.base import VERDICTS
from facelab.experiments.claims.run import _measure


def args(tmp_path, **extra) -> argparse.Namespace:
    base = {"quick": True, "only": None, "seeds": [0], "scale": 1.0, "device": "cpu",
            "threads": 2, "out": tmp_path / "runs", "data": tmp_path / "data",
            "doc": tmp_path / "docs" / "claims.md", "report_only": False}
    return argparse.Namespace(**{**base, **extra})


def test_every_claim_runs_quick_and_the_page_holds_them_all(tmp_path):
    assert _measure(args(tmp_path), list(CLAIMS)) == 0
    text = (tmp_path / "docs" / "claims.md").read_text()
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [c.title for c in CLAIMS.values()]
    for name, section in zip(CLAIMS, sections, strict=True):
        verdict = re.search(r"\*\*Verdict: (.+?)\.\*\*", section).group(1)
        assert verdict in VERDICTS, name
        assert "**Rule (fixed before running).**" in section and "\n| " in section, name
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section):
            assert (tmp_path / "docs" / image).is_file(), (name, image)
    assert "Not measured yet" not in text
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == sorted(CLAIMS)

    (tmp_path / "docs" / "claims.md").unlink()
    assert _measure(args(tmp_path, report_only=True), list(CLAIMS)) == 0
    again = (tmp_path / "docs" / "claims.md").read_text()
    assert again.split("\n## ")[1:] == sections  # the same sections, from the saved results
    assert "--report-only" in again
