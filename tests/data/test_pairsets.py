import pickle

import cv2
import numpy as np
import pytest

from facelab.data.pairsets import load_bin, write_bin
from facelab.errors import FacelabError


def _smooth_images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (7, 7, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC))
    return out


def test_round_trip(tmp_path):
    ims = _smooth_images(6)
    write_bin(tmp_path / "s.bin", ims, [True, False, True])
    images, same = load_bin(tmp_path / "s.bin")
    assert images.shape == (6, 112, 112, 3) and images.dtype == np.uint8
    assert same.tolist() == [True, False, True]
    assert np.abs(images.astype(int) - np.stack(ims)).mean() < 3  # JPEG q95 of smooth images
    assert not list(tmp_path.glob("*.tmp"))


def test_reads_insightface_layout_with_png_bytes_and_numpy_arrays(tmp_path):
    ims = _smooth_images(4, seed=3)
    # numpy uint8 arrays
    bins = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1] for im in ims]
    bins[1] = bins[1].tobytes()  # and raw bytes mixed in
    (tmp_path / "x.bin").write_bytes(pickle.dumps((bins, [False, True]), protocol=2))
    images, same = load_bin(tmp_path / "x.bin")
    np.testing.assert_array_equal(images, np.stack(ims))  # PNG is lossless, RGB order kept
    assert same.tolist() == [False, True]


class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_refuses_code_in_pickle(tmp_path):
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"x", _Evil()], [True])))
    with pytest.raises(FacelabError, match="evil.bin.*refused global builtins.print"):
        load_bin(tmp_path / "evil.bin")


@pytest.mark.parametrize(
    "payload,msg",
    [
        (pickle.dumps(([b"a"], [True])), "1 images for 1 pairs"),
        (pickle.dumps({"a": 1}), "expected a pickled"),
        (pickle.dumps(([b"notanimage", b"x"], [True])), "image 0: cannot decode"),
        (b"garbage", "not a valid .bin"),
    ],
)
def test_bad_files_named(tmp_path, payload, msg):
    (tmp_path / "bad.bin").write_bytes(payload)
    with pytest.raises(FacelabError, match=msg):
        load_bin(tmp_path / "bad.bin")


def test_missing_file(tmp_path):
    with pytest.raises(FacelabError, match="nope.bin"):
        load_bin(tmp_path / "nope.bin")
