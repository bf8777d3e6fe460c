"""AdaptiveFace's Adaptive Data Sampling: the weight update against a loop transcription, draws that
follow the weights, determinism and exact resume from the saved state, the trainer's per-sample
correctness feedback, and the weights saved in the checkpoint."""

import numpy as np
import pytest
import torch
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.data.samplers import AdaptiveBatchSampler
from facelab.data.transforms import PREPROCESS_DEFAULT, to_input
from facelab.model import load_checkpoint
from facelab.train.loop import train
from facelab.train.task import FaceTask

UP, DOWN, LOW, HIGH = 1.5, 0.5, 0.1, 4.0


def sampler(n=20, bs=4, seed=3):
    return AdaptiveBatchSampler(n, bs, seed, flip=True, up=UP, down=DOWN, min_weight=LOW, max_weight=HIGH)


def test_feedback_follows_the_update_rule():
    s = sampler()
    ref = [1.0] * 20
    rng = np.random.default_rng(0)
    for epoch in range(3):
        s.set_position(epoch)
        for b, batch in enumerate(s):
            correct = rng.random(4) < 0.5
            s.feedback(b, correct)
            for (i, _), ok in zip(batch, correct, strict=True):  # in batch order: repeated images compound
                ref[i] = min(max(ref[i] * (DOWN if ok else UP), LOW), HIGH)
    np.testing.assert_allclose(s.weights, ref, rtol=1e-15)
    assert min(ref) < 1.0 < max(ref)
    with pytest.raises(ValueError, match="feedback"):
        s.feedback(0, [True, False])


def test_draws_follow_the_weights_of_the_epoch_start():
    n = 1000
    s = AdaptiveBatchSampler(n, 50, seed=0)
    state = s.state_dict()
    state["weights"] = torch.where(torch.arange(n) < 100, 5.0, 0.2).double()  # 100 heavy images
    s.load_state_dict(state)
    before = list(s)  # still epoch 0: drawn from the weights at its start (uniform)
    s.set_position(1)  # a new epoch takes the current weights
    heavy = np.mean([i < 100 for batch in s for i, _ in batch])
    assert abs(heavy - 500 / 680) < 0.05  # expected share Σw_heavy / Σw = 100·5 / (100·5 + 900·0.2)
    assert abs(np.mean([i < 100 for batch in before for i, _ in batch]) - 0.1) < 0.05
    assert all(len(batch) == 50 for batch in s) and len(s) == 20


def test_feedback_within_an_epoch_acts_from_the_next_one():
    s = sampler()
    first = list(s)
    for b in range(len(first)):
        s.feedback(b, [False, True, True, True])
    assert list(s) == first  # same epoch, same batches
    s.set_position(0, 2)
    assert list(s) == first[2:]
    s.set_position(1)
    nxt = list(s)
    fresh = sampler()
    fresh.set_position(1)
    assert nxt != list(fresh)  # the feedback changed the draw of the next epoch


def test_state_dict_resumes_the_same_batches():
    a = sampler()
    rng = np.random.default_rng(1)
    for epoch in range(2):
        a.set_position(epoch)
        for b, _ in enumerate(a):
            a.feedback(b, rng.random(4) < 0.3)
    a.set_position(2)
    a.feedback(0, [True, False, False, True])
    saved = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in a.state_dict().items()}
    b = sampler()
    b.load_state_dict(saved)
    b.set_position(2, 1)
    a.set_position(2, 1)
    assert list(a) == list(b)
    for s in (a, b):
        for k, _ in enumerate(s, start=1):
            s.feedback(k, [False] * 4)
        s.set_position(3)
    assert list(a) == list(b)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_task_reports_per_sample_correctness(tmp_path):
    """TaskOutput.correct: the label's column holds the highest training logit (with mining, columns mapped
    back to class ids)."""
    cfg = config_from_dict(recipe(tmp_path, tmp_path / "r", margin="cosface", width=4,
                                  extra={"head": {"hard_prototypes": 1, "kwargs": {"m": 0.0}}}))
    torch.manual_seed(0)
    task = FaceTask(cfg, num_classes=7, preprocess={**PREPROCESS_DEFAULT, "size": 112}).train()
    images = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert task(images, labels).correct is None  # not computed unless Adaptive Data Sampling asks for it
    task.track_correct = True
    correct = task(images, labels).correct
    emb = task.backbone(to_input(images, task.preprocess))
    out = task.head.forward_with_logits(emb, labels)
    columns = out.columns.tolist()
    expected = [columns[max(range(len(row)), key=row.__getitem__)] == y for row, y in zip(
        out.logits.tolist(), labels.tolist(), strict=True)]
    assert correct.tolist() == expected
    assert task.head.correct(out, labels).tolist() == expected
    task.eval()  # every class, no mining; samples 0 and 3 made right and 1 wrong by construction
    with torch.no_grad():
        emb = task.backbone(to_input(images, task.preprocess))
        task.head.classifier.weight[0] = emb[0]
        task.head.classifier.weight[3] = emb[3]
        task.head.classifier.weight[6] = emb[1]  # class 6 is not sample 1's
        correct = task(images, labels).correct
        assert task.head.classifier(emb, labels).columns is None
        assert task.head.forward_with_logits(emb, labels).columns.tolist() == list(range(7))
    assert correct[0] and correct[3] and not correct[1]


@pytest.mark.parametrize("stop", [2, 3])  # mid-epoch and at the epoch boundary (3 batches per epoch)
def test_training_with_adaptive_sampling_resumes_exactly(tmp_path, stop):
    folder = make_identity_folder(tmp_path / "data")
    extra = {"data": {"adaptive_sampling": {"enabled": True, "up": 2.0, "down": 0.5}}}
    full = recipe(folder, tmp_path / "full", steps=4, extra=extra, amp="none")
    part = recipe(folder, tmp_path / "part", steps=4, extra=extra, amp="none")
    train(config_from_dict(full))
    train(config_from_dict(part), stop_at=stop)
    train(config_from_dict(part), resume=True)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for key in ("weights", "epoch_weights"):
        assert torch.equal(a["sampler"][key], b["sampler"][key])
    assert a["sampler"]["drawn_epoch"] == b["sampler"]["drawn_epoch"] == 1
    w = a["sampler"]["weights"]
    assert ((w != 1.0).any() and (w >= 0.2).all() and (w <= 5.0).all())
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
