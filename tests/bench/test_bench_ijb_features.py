"""bench.bench_ijb_features at tiny sizes: positive rates, and its end-to-end features are extract_features'."""

import numpy as np
import pytest
import torch

from bench import bench_ijb_features  # bench/: a folder of the repository (pytest's pythonpath)
from facelab.eval.protocols.ijb import extract_features, read_ijb_meta


# slow (~7 s: a spawned decode pool): a benchmark at smoke size. Default coverage: the module
# imports (test_bench_modules.py); pooled IJB features equal in-process ones
# (tests/eval/test_ijb.py::test_process_pool_gives_the_same_features).
@pytest.mark.slow
def test_rates_positive_and_features_are_extract_features(tmp_path):
    threads = torch.get_num_threads()
    try:
        out = bench_ijb_features.main(["--model", "tiny", "--images", "8", "--per-subject", "4", "--window", "4",
                                       "--batch-size", "4", "--workers", "0", "1", "--loose-size", "160",
                                       "--threads", "1", "--fixture", str(tmp_path / "IJBC")])
        # the reference on the bench's path: its model, batch size and thread count (--threads 1 set
        # torch's); at another thread count the kernels may round differently in the last bits
        model = bench_ijb_features.make_model("tiny", torch.device("cpu"))
        meta = read_ijb_meta(tmp_path / "IJBC")
        f, ff = extract_features(model, meta, batch_size=4, workers=0, window=4)
    finally:
        torch.set_num_threads(threads)
    assert out["images"] == 8 and out["model"] > 0
    for rates in (out["decode"], out["end_to_end"]):
        assert set(rates) == {0, 1} and all(r > 0 for r in rates.values()), rates
    assert out["first_window_s"][1] > 0 and out["shutdown_s"][1] >= 0
    assert f.shape == ff.shape == (8, 512)
    for w in (0, 1):
        bf, bff = out["features"][w]
        np.testing.assert_array_equal(bf, f)
        np.testing.assert_array_equal(bff, ff)
