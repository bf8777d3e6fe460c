"""bench/gpu_check.sh, the one prepared device call, runs its steps at smoke sizes on a CPU (QUICK=1), so that a
lent GPU's minutes are not spent finding out that the script itself is broken."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["tests", "throughput", "loader", "partial_fc", "ijb_features", "train_loop"]


def run_script(out: Path, **settings: str) -> tuple[int, list[str]]:
    env = {**os.environ, "QUICK": "1", "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(out), **settings}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, (out / "summary.txt").read_text().splitlines()


# slow (~30-45 s: six python processes import torch): run it before a device call,
# `pytest -m slow tests/bench/test_gpu_check.py`. The script's plumbing (every step run and
# recorded, a failing step not stopping the others) stays in the default suite:
# test_a_failing_step_does_not_stop_the_others.
@pytest.mark.slow
def test_every_step_runs_and_logs(tmp_path):
    rc, summary = run_script(tmp_path)
    assert rc == 0, summary
    assert [line.split()[0] for line in summary] == STEPS
    assert all(" rc=0 " in line for line in summary)
    assert re.search(r"torch \S+", (tmp_path / "env.txt").read_text())
    assert "images/s" in (tmp_path / "throughput.log").read_text()
    assert (tmp_path / "partial_fc.json").is_file()


def test_a_failing_step_does_not_stop_the_others(tmp_path):
    rc, summary = run_script(tmp_path, PYTHON="false", WHEELS=str(tmp_path / "none"))  # every step fails at once
    assert rc != 0
    assert [line.split()[0] for line in summary] == STEPS  # every step ran and was recorded
    assert all(" rc=1 " in line for line in summary)
