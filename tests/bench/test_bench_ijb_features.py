"""bench.bench_ijb_features at tiny sizes: positive rates, and its end-to-end features are extract_features'."""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import bench_ijb_features  # noqa: E402
from facelab.eval.ijb import extract_features, read_ijb_meta  # noqa: E402


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
