"""Pair objectives through the real train() loop: no-head runs, learnable β optimised, saved and resumed,
mixed head + pair loss, siamese batches, thresholds in metrics.json and the checkpoint."""

import json

import pytest
import torch
from tests.references.float_paths import DIST_TOL
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.data.transforms import PREPROCESS_DEFAULT, to_input
from facelab.errors import FacelabError
from facelab.eval.protocols.thresholds import select_thresholds
from facelab.model import load_checkpoint
from facelab.train.loop import train
from facelab.train.task import FaceTask

MARGIN_PK = {"objective": "pairs", "pairs": {"loss": "margin", "miner": "distance_weighted"},
             "data": {"sampler": "pk", "pk_k": 4}}


def _cfg(folder, out, extra, steps=4, val=None):
    data = recipe(folder, out, steps=steps, amp="none")
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    if val:
        data["data"]["val_pairs"] = [str(val)]
    return config_from_dict(data)


def test_pairs_objective_trains_without_a_head_and_optimises_beta(tiny_data, tmp_path):
    summary = train(_cfg(tiny_data / "train", tmp_path / "r", MARGIN_PK, val=tiny_data / "val.bin"))
    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["head"] == {}  # no classifier
    beta = ckpt["objectives"]["pairs.loss.beta"]
    assert beta.shape == (1,) and beta.item() != pytest.approx(1.2, abs=1e-6)  # moved from its initial value
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss/loss"] == r["loss/pairs"] for r in log if "loss/loss" in r)
    # the deployed thresholds: chosen on the validation pairs, in metrics.json and in the checkpoint
    assert set(summary["thresholds"]) == {"val"} and ckpt["thresholds"] == summary["thresholds"]
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())["thresholds"]
    assert on_disk == summary["thresholds"]
    assert 0.0 <= on_disk["val"]["f1"]["f1"] <= 1.0 and on_disk["val"]["accuracy"]["threshold"] > 0.0


def test_pair_run_resumes_exactly_beta_included(tmp_path):
    folder = make_identity_folder(tmp_path / "data", classes=6, per_class=4)
    extra = {**MARGIN_PK, "pairs": {"loss": "margin"}}  # all triplets: no random miner between the runs
    train(_cfg(folder, tmp_path / "full", extra))
    train(_cfg(folder, tmp_path / "part", extra), stop_at=2)
    train(_cfg(folder, tmp_path / "part", extra), resume=True)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for part in ("model", "objectives"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_mixed_objective_adds_the_weighted_pair_term_to_the_head_loss(tmp_path):
    cfg = _cfg(tmp_path, tmp_path / "r", {"objective": "head+pairs", "pairs": {"loss": "triplet", "weight": 0.3}})
    task = FaceTask(cfg, num_classes=4, preprocess={**PREPROCESS_DEFAULT, "size": 112})
    images = torch.randint(0, 255, (8, 3, 112, 112), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = task(images, labels).losses
    emb = task.backbone(to_input(images, task.preprocess))
    alone = task.objectives["pairs"](emb, labels)["pairs"]  # the same term computed on its own
    assert losses["pairs"].item() == pytest.approx(alone.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["ce"].item() + losses["pairs"].item(), rel=1e-6)
    assert sum(p.numel() for p in task.head.parameters()) > 0
    no_head = FaceTask(_cfg(tmp_path, tmp_path / "p", MARGIN_PK), 4, {**PREPROCESS_DEFAULT, "size": 112})
    assert no_head.head is None  # objective: pairs has no classifier head
    out = no_head(images, labels)
    assert set(out.losses) == {"loss", "pairs"} and out.correct is None
    assert out.losses["loss"].item() == pytest.approx(out.losses["pairs"].item(), rel=1e-6)


def test_siamese_run_trains_on_pairs(tmp_path):
    folder = make_identity_folder(tmp_path / "data", classes=6, per_class=4)
    extra = {"objective": "pairs", "pairs": {"loss": "contrastive"}, "data": {"sampler": "siamese"}}
    summary = train(_cfg(folder, tmp_path / "r", extra, steps=3))
    assert summary["train"]["steps"] == 3 and summary["thresholds"] == {}


@pytest.mark.parametrize(("extra", "match"), [
    ({"objective": "pairs", "data": {"adaptive_sampling": {"enabled": True}}}, "adaptive_sampling"),
    ({"objective": "pair"}, "config objective"),
])
def test_bad_objective_config(tmp_path, extra, match):
    with pytest.raises(FacelabError, match=match):
        FaceTask(_cfg(tmp_path, tmp_path / "r", extra), 4, {**PREPROCESS_DEFAULT, "size": 112})


def test_thresholds_in_checkpoint_reproduce_the_stored_accuracy(tiny_data, tmp_path):
    """Independent check of the stored operating point: re-embed the pairs with the saved model."""
    import numpy as np

    from facelab.data.pairsets import load_bin
    from facelab.eval.embed import embed_images
    from facelab.eval.protocols.verification import pair_distances
    from facelab.model import load_model

    cfg = _cfg(tiny_data / "train", tmp_path / "r", {}, val=tiny_data / "val.bin")
    train(cfg)
    model, pre = load_model(tmp_path / "r")
    images, same = load_bin(tiny_data / "val.bin")
    stored = load_checkpoint(tmp_path / "r")["thresholds"]["val"]

    def distances(batch_size):
        emb = embed_images(model, images, batch_size=batch_size, preprocess=pre)
        return pair_distances(emb[0::2], emb[1::2])

    # the loop's own path (its evaluation batch, 2 x data.batch_size, on train.threads threads):
    # the same distances bit for bit, so the same selection, thresholds included
    torch.set_num_threads(cfg.train.threads)  # keep_torch_threads restores the count afterwards
    own = distances(2 * cfg.data.batch_size)
    assert select_thresholds(own, same) == stored
    # another batch size is another kernel path (the last bits differ on AMX or at other thread
    # counts, and a threshold picked from the sorted distances can then move to another candidate):
    # distances to float32 rounding, and the accuracy at the stored threshold up to the pairs whose
    # distance lies within that rounding of it (each can land on the other side). Batch 1: a path
    # whose last bits differ from the loop's on every CPU tried, so the tolerance is exercised.
    d = distances(1)
    np.testing.assert_allclose(d, own, rtol=0, atol=DIST_TOL)
    t, n = stored["accuracy"]["threshold"], len(same)
    flips = int(np.sum(np.abs(own - t) <= DIST_TOL))
    accuracy = float(np.mean((d < t) == same))
    assert accuracy == pytest.approx(stored["accuracy"]["accuracy"], abs=flips / n)
