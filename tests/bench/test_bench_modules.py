"""Every bench/bench_*.py module imports and has the main() that `python -m bench` calls: a moved or
renamed library function breaks the benchmarks here, in the default suite (running them at smoke
sizes is slow: test_bench_ijb_features.py, test_bench_partial_fc.py, test_gpu_check.py)."""

import importlib
import pkgutil
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
NAMES = sorted(m.name for m in pkgutil.iter_modules([str(BENCH)]) if m.name.startswith("bench_"))


def test_the_bench_folder_has_benchmarks():
    assert "bench_verification" in NAMES and len(NAMES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_bench_module_imports_and_has_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)
