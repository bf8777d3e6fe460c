"""Every entry of facelab.eval.protocols.PROTOCOLS, called in the one shape
evaluate(model, data, *, preprocess, device, batch_size, ...) on a tiny fixture, gives what the
protocol's direct functions give on the same data."""

import numpy as np
import pytest
import torch
from tests.references.ijb_fixture import write_ijb_fixture
from torch import nn

from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.eval.embed import embed_images
from facelab.eval.protocols import PROTOCOLS
from facelab.eval.protocols.ijb import evaluate_ijb_features, extract_features, read_ijb_meta
from facelab.eval.protocols.lfw_pairs import load_lfw_pairs, read_lfw_pairs
from facelab.eval.protocols.verification import pair_distances, verify_pairs
from facelab.eval.reports.plots import score_histogram
from facelab.io import encode_image

BATCH = 5  # one batch size for the entry and the direct path: the same features bit for bit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 8))


def _pairs(tmp_path, model):
    rng = np.random.default_rng(0)
    sets = {
        "a": (rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), np.arange(20) % 2 == 0),
        "b": (rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8), [True, False] * 10),
    }
    expected = {}
    for name, (images, same) in sets.items():  # pairs interleaved; the score histogram beside
        emb = embed_images(model, images, batch_size=BATCH, preprocess=PREPROCESS_DEFAULT)
        expected[name] = verify_pairs(emb[0::2], emb[1::2], np.asarray(same))
        cosine = 1.0 - pair_distances(emb[0::2], emb[1::2]) / 2.0
        expected[name]["histogram"] = score_histogram(np.asarray(same), cosine)
    return sets, {}, expected


def _lfw_pairs(tmp_path, model):
    """pairs.txt of 2 sets x 2 pairs per class over 16 x 16 crops."""
    rng = np.random.default_rng(1)
    for name, count in {"Ann": 2, "Bob": 3, "Cid": 2}.items():
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for k in range(1, count + 1):
            image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            (tmp_path / "lfw" / name / f"{name}_{k:04d}.jpg").write_bytes(encode_image(image))
    lines = ["2\t2", "Ann\t1\t2", "Bob\t1\t3", "Ann\t1\tBob\t2", "Cid\t1\tAnn\t2",
             "Bob\t2\t3", "Cid\t1\t2", "Bob\t1\tCid\t2", "Ann\t2\tCid\t1"]  # fmt: skip
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    data = (tmp_path / "pairs.txt", tmp_path / "lfw")
    images, same = load_lfw_pairs(*data)
    _, sets, _ = read_lfw_pairs(data[0])
    emb = embed_images(model, images, batch_size=BATCH, preprocess=PREPROCESS_DEFAULT)
    result = verify_pairs(emb[0::2], emb[1::2], same, folds=sets)  # the file's own folds
    assert result["convention"]["folds"] == 2
    cosine = 1.0 - pair_distances(emb[0::2], emb[1::2]) / 2.0
    return data, {}, {"pairs": {**result, "histogram": score_histogram(same, cosine)}}


def _ijb(tmp_path, model):
    """An IJB-C folder of 3 subjects x 4 crops, 2 templates each."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    root = write_ijb_fixture(tmp_path / "IJBC", images, np.repeat(np.arange(3), 4),
                             templates_per_subject=2)  # fmt: skip
    meta = read_ijb_meta(root)
    feats, flips = extract_features(model, meta, BATCH, preprocess=PREPROCESS_DEFAULT, workers=0)
    return root, {"workers": 0}, evaluate_ijb_features(meta, feats, flips)


CASES = {"pairs": _pairs, "lfw_pairs": _lfw_pairs, "ijb": _ijb}


def test_every_protocol_has_a_case():
    assert set(CASES) == set(PROTOCOLS)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_entry_matches_its_direct_functions(name, tmp_path):
    model = _model()
    data, extra, expected = CASES[name](tmp_path, model)
    got = PROTOCOLS[name](
        model, data, preprocess=PREPROCESS_DEFAULT, device="cpu", batch_size=BATCH, **extra
    )
    assert isinstance(got, dict)
    assert {k: got[k] for k in expected} == expected
