import numpy as np
import pytest

from facelab.errors import FacelabError
from facelab.eval.protocols.lfw_pairs import load_lfw_pairs, read_lfw_pairs
from facelab.eval.protocols.verification import verify_pairs
from facelab.io import encode_image, read_image

# 2 sets x 2 pairs per class, tab-separated like the original file
PAIRS = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tBob\t2
Cid\t1\tAnn\t2
Bob\t2\t3
Cid\t1\t2
Bob\t1\tCid\t2
Ann\t2\tCid\t1
"""
IMAGES = {"Ann": 2, "Bob": 3, "Cid": 2}


@pytest.fixture
def lfw(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in IMAGES.items():
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for k in range(1, count + 1):
            im = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            (tmp_path / "lfw" / name / f"{name}_{k:04d}.jpg").write_bytes(encode_image(im))
    (tmp_path / "pairs.txt").write_text(PAIRS)
    return tmp_path


def test_parse_pairs(lfw):
    pairs, sets, per = read_lfw_pairs(lfw / "pairs.txt")
    assert (sets, per, len(pairs)) == (2, 2, 8)
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert (pairs[3].name1, pairs[3].num1, pairs[3].name2, pairs[3].num2, pairs[3].line) == (
        "Cid",
        1,
        "Ann",
        2,
        5,
    )
    assert (pairs[0].name1, pairs[0].name2, pairs[0].num2) == ("Ann", "Ann", 2)


def test_load_pairs_interleaves_like_bin(lfw):
    images, same = load_lfw_pairs(lfw / "pairs.txt", lfw / "lfw")
    assert images.shape == (16, 16, 16, 3) and images.dtype == np.uint8
    assert same.tolist() == [True, True, False, False] * 2
    files = [
        ("Ann", 1),
        ("Ann", 2),
        ("Bob", 1),
        ("Bob", 3),
        ("Ann", 1),
        ("Bob", 2),
        ("Cid", 1),
        ("Ann", 2),
    ]
    for i, (name, k) in enumerate(files):
        np.testing.assert_array_equal(
            images[i], read_image(lfw / "lfw" / name / f"{name}_{k:04d}.jpg")
        )
    emb = images.reshape(16, -1).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert verify_pairs(emb[0::2], emb[1::2], same, folds=2)["pairs"] == 8  # one fold per set


def test_single_number_header(tmp_path):
    path = tmp_path / "pairsDevTrain.txt"
    path.write_text("1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    pairs, sets, per = read_lfw_pairs(path)
    assert (sets, per, [p.same for p in pairs]) == (1, 1, [True, False])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty file"),
        ("10 300 5\n", r"pairs.txt:1: header"),
        ("ten 300\n", r"pairs.txt:1: expected a positive integer, got 'ten'"),
        ("1 1\nAnn 1 2 3 4\nAnn 1 Bob 1\n", r"pairs.txt:2: expected 'name n1 n2'"),
        ("1 1\nAnn 1 x\nAnn 1 Bob 1\n", r"pairs.txt:2: expected a positive integer, got 'x'"),
        ("1 1\n\nAnn 1 0\nAnn 1 Bob 1\n", r"pairs.txt:3: expected a positive integer, got '0'"),
        ("1 1\nAnn 1 2\nAnn 1 Ann 2\n", r"pairs.txt:3: a different-person line names 'Ann' twice"),
        ("1 2\nAnn 1 2\nAnn 1 Bob 1\n", r"header says 1 set\(s\) x 2 x 2 = 4 pairs, found 2"),
        (
            "1 1\nAnn 1 Bob 1\nAnn 1 2\n",
            r"pairs.txt:2: set 1 should hold 1 same-person then 1 different",
        ),
    ],
)
def test_bad_pairs_file_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(FacelabError, match=match):
        read_lfw_pairs(path)


def test_missing_image_and_mixed_sizes(lfw):
    (lfw / "lfw" / "Cid" / "Cid_0002.jpg").unlink()
    with pytest.raises(FacelabError, match=r"pairs.txt:7: image .*Cid_0002.jpg not found"):
        load_lfw_pairs(lfw / "pairs.txt", lfw / "lfw")
    (lfw / "lfw" / "Cid" / "Cid_0002.jpg").write_bytes(
        encode_image(np.zeros((20, 16, 3), np.uint8))
    )
    with pytest.raises(FacelabError, match="different sizes"):
        load_lfw_pairs(lfw / "pairs.txt", lfw / "lfw")
