"""bench.bench_partial_fc at tiny sizes: a subprocess per (C, rate), measured time and peak memory, --json."""

import json
import sys

import pytest

from bench import bench_partial_fc  # bench/: a folder of the repository (pytest's pythonpath)


# slow (~10 s: a python process per row): a benchmark at smoke size. Default coverage: the
# module imports (test_bench_modules.py); Partial FC itself
# (tests/distributed/test_shares_and_partial_fc.py).
@pytest.mark.slow
def test_rows_measured_in_subprocesses_and_written(tmp_path):
    out = tmp_path / "rows.json"
    # C=2M at d=32 needs 2.1 x 0.7-0.8 GiB computed: over the 0.5 GiB budget, so it is listed but not run
    rows = bench_partial_fc.main(["--classes", "1000", "2000000", "--rates", "0.3", "1.0", "--dim", "32",
                                  "--batch", "8", "--warmup", "1", "--repeats", "2", "--threads", "1",
                                  "--budget-gb", "0.5", "--json", str(out)])
    assert [(r["classes"], r["rate"], r["run"]) for r in rows] == [
        (1000, 0.3, True), (1000, 1.0, True), (2_000_000, 0.3, False), (2_000_000, 1.0, False)]
    for row in rows[:2]:
        assert row["step_s"] > 0 and len(row["step_s_all"]) == 2 and row["peak_bytes"] > 0, row
        assert row["memory_method"] == "VmHWM - VmRSS" or sys.platform != "linux"
    assert rows[1]["time_ratio"] == rows[1]["memory_ratio"] == 1.0
    assert rows[0]["time_ratio"] > 0 and rows[0]["memory_ratio"] > 0
    assert all("step_s" not in r and r["need_bytes"] > 0.5 * bench_partial_fc.GB for r in rows[2:])
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["settings"]["budget_gb"] == 0.5
    assert not (tmp_path / "rows.json.tmp").exists()


def test_computed_bytes():
    m = bench_partial_fc.head_bytes(1000, 32, 8, 0.3)
    assert m == {"params": 4 * 32_000, "grads": 4 * 32_000, "momentum": 4 * 32_000, "logits": 4 * 8 * 300,
                 "sampled centres": 4 * 300 * 32}
    assert bench_partial_fc.head_bytes(1000, 32, 8, 1.0)["sampled centres"] == 0  # every row: no copy
