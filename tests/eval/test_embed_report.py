import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.protocols.pairs import evaluate_pair_sets
from facelab.eval.protocols.verification import verify_pairs
from facelab.eval.reports.plots import plot_roc
from facelab.eval.reports.tables import format_table
from facelab.io import write_atomic
from facelab.jsonfile import write_json_atomic

H = W = 6


def _linear_model(seed=0, dim=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, dim))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def _manual(model, images, flip=True, bgr=False, mean=0.5, std=0.5):
    """Independent numpy float64 transcription: channel order, x/255, (x-mean)/std, NCHW
    flatten, W x + b."""
    lin = model[1]
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    x = images[..., ::-1] if bgr else images
    x = (x.astype(np.float64) / 255 - np.reshape(mean, (1, 1, 1, -1))) / np.reshape(
        std, (1, 1, 1, -1)
    )
    x = x.transpose(0, 3, 1, 2)  # [N, C, H, W]
    emb = x.reshape(len(x), -1) @ w.T + b
    if flip:
        emb = emb + x[..., ::-1].reshape(len(x), -1) @ w.T + b
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


@pytest.mark.parametrize("flip", [True, False])
def test_flip_fusion_matches_manual_sum(flip):
    model, images = _linear_model(), _images(7)
    out = embed_images(model, images, batch_size=3, flip=flip)
    assert out.dtype == np.float32 and out.shape == (7, 5)
    np.testing.assert_allclose(out, _manual(model, images, flip=flip), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)


def test_flip_changes_the_embedding():
    model, images = _linear_model(), _images(4)
    assert not np.allclose(
        embed_images(model, images), embed_images(model, images, flip=False), atol=1e-3
    )


def test_bgr_and_per_channel_normalisation():
    model, images = _linear_model(1), _images(5, seed=2)
    pre = {"colour": "BGR", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    out = embed_images(model, images, preprocess=pre)
    np.testing.assert_allclose(
        out, _manual(model, images, bgr=True, mean=pre["mean"], std=pre["std"]), atol=2e-6
    )
    rgb = embed_images(model, images, preprocess={**pre, "colour": "RGB"})
    assert not np.allclose(out, rgb, atol=1e-3)
    assert PREPROCESS_DEFAULT == {
        "colour": "RGB",
        "mean": 0.5,
        "std": 0.5,
        "template": "arcface112",
        "size": 112,
    }


class _BNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
        self.head = nn.Linear(4 * (H - 2) * (W - 2), 8)

    def forward(self, x):
        return self.head(self.body(x).flatten(1)), x.new_zeros(len(x))  # (embedding, extra) tuple


def test_eval_mode_no_grad_batch_independent_and_modes_restored():
    torch.manual_seed(0)
    model = _BNModel()
    model.train()
    model.body[2].eval()  # mixed modes must come back as they were
    before = {name: m.training for name, m in model.named_modules()}
    stats = model.body[1].running_mean.clone()
    images = _images(9, seed=3)
    a = embed_images(model, images, batch_size=1)
    b = embed_images(model, images, batch_size=64)
    # eval BN + no dropout: a sample does not see its batch
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert torch.equal(model.body[1].running_mean, stats)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_evaluate_pair_sets_interleaves_pairs():
    model = _linear_model(2)
    images, same = _images(40, seed=4), np.arange(20) % 2 == 0
    res = evaluate_pair_sets(model, {"toy": (images, same)}, batch_size=16, folds=5)
    res["toy"].pop("histogram")  # checked in test_protocols.py
    # the embeddings of evaluate_pair_sets' own path (same batch size): identical fold accuracies.
    # The float64 transcription (_manual) would be another path, whose distances can land on the
    # other side of a threshold grid point; test_flip_fusion_matches_manual_sum ties the two
    # together.
    emb = embed_images(model, images, batch_size=16)
    expect = verify_pairs(emb[0::2], emb[1::2], same, folds=5)
    assert res["toy"] == expect  # fold accuracies, thresholds, VAL, ROC
    wrong = verify_pairs(emb[:20], emb[20:], same, folds=5)  # what another pairing would give
    assert (wrong["fold_accuracies"], wrong["fpr"]) != (expect["fold_accuracies"], expect["fpr"])
    assert res["toy"]["pairs"] == 20 and res["toy"]["convention"]["folds"] == 5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: embed_images(m, _images(2).astype(np.float32)), "uint8"),
        (lambda m: embed_images(m, _images(2)[..., :2]), r"\[N, H, W, 3\]"),
        (lambda m: embed_images(m, _images(2), preprocess={"colour": "YUV"}), "colour"),
        (lambda m: embed_images(m, _images(2), preprocess={"scale": 1}), "unknown key"),
        (lambda m: embed_images(m, _images(2), preprocess={"std": 0}), "non-zero"),
        (
            lambda m: evaluate_pair_sets(m, {"x": (_images(5), [True, False])}),
            "'x': 5 images for 2 pairs",
        ),
    ],
)
def test_embed_input_errors(call, match):
    with pytest.raises(FacelabError, match=match):
        call(_linear_model())


def _result(acc, seed=0):
    rng = np.random.default_rng(seed)
    fpr = np.sort(np.r_[0.0, rng.random(50), 1.0])
    return {"accuracy": acc, "accuracy_std": 0.0025, "val": 0.9, "val_std": 0.01, "far": 1e-3,
            "pairs": 6000, "tpr": np.sqrt(fpr).tolist(), "fpr": fpr.tolist(),
            "convention": {"far_target": 1e-3}}  # fmt: skip


def test_format_table():
    table = format_table({"lfw": _result(0.995), "cfp_fp": _result(0.9)})
    lines = table.splitlines()
    assert len(lines) == 4 and "accuracy" in lines[0]
    assert "| lfw | 6000 | 99.50 ± 0.25 | 90.00 ± 1.00 @ 0.001 |" == lines[2]
    assert lines[3].startswith("| cfp_fp | 6000 | 90.00 ± 0.25")


def test_plot_roc_writes_png_atomically(tmp_path):
    path = tmp_path / "roc.png"
    path.write_bytes(b"old")
    plot_roc({"lfw": _result(0.99), "agedb_30": _result(0.95, seed=1)}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["roc.png"]


def test_write_json_atomic_round_trip(tmp_path):
    obj = {
        "acc": np.float64(0.5),
        "n": np.int64(3),
        "arr": np.arange(3),
        "nested": [{"x": "é"}],
        "ok": True,
    }
    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(path, obj)
    write_json_atomic(path, obj)  # overwrite
    expected = {"acc": 0.5, "n": 3, "arr": [0, 1, 2], "nested": [{"x": "é"}], "ok": True}
    assert json.loads(path.read_text("utf-8")) == expected
    assert os.listdir(path.parent) == ["metrics.json"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": 1})

    def broken(tmp):
        tmp.write_bytes(b'{"half')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_atomic_write_gives_ordinary_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
