"""Per-rank sampler shares; Partial FC column sampling; seeded centre init; GlobalBatchNorm (single process
parts: the functions are the identity or local at world size 1)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facelab.config import config_from_dict
from facelab.data.samplers import AdaptiveBatchSampler, EpochBatchSampler
from facelab.distributed.batchnorm import GlobalBatchNorm, convert_batchnorm
from facelab.errors import FacelabError
from facelab.heads import Classifier, build_head
from facelab.heads.init import generator, seeded_normal, seeded_uniform
from facelab.heads.partial_fc import sample_columns
from facelab.train.task import FaceTask

PREPROCESS = {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5, "std": 0.5}


@pytest.mark.parametrize("cls", [EpochBatchSampler, AdaptiveBatchSampler])
def test_rank_shares_make_up_the_single_process_batch(cls):
    one = cls(50, 8, seed=3)
    ranks = [cls(50, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in (one, *ranks):
        s.set_position(1, 2)  # mid-epoch resume position
    batches = list(one)
    shares = [list(s) for s in ranks]
    assert len(batches) == len(shares[0]) == 6 - 2
    for b, (a, c) in enumerate(zip(*shares, strict=True)):
        assert len(a) == len(c) == 4 and a + c == batches[b]
    with pytest.raises(ValueError, match="does not split"):
        cls(50, 9, seed=3, rank=0, world_size=2)


def test_adaptive_feedback_of_the_gathered_batch_keeps_ranks_in_step():
    one = AdaptiveBatchSampler(40, 8, seed=1)
    ranks = [AdaptiveBatchSampler(40, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    correct = np.array([True, False] * 4)
    for s in (one, *ranks):
        s.feedback(0, correct)  # every rank gets the whole (gathered) batch's feedback
        s.set_position(1, 0)
    assert list(ranks[0])[0] + list(ranks[1])[0] == list(one)[0]


def test_sample_columns_keeps_positives_and_the_rate():
    local = torch.tensor([3, -1, 7, 3, 0])
    cols = sample_columns(local, 100, 0.1, (0, 5, 1))
    assert len(cols) == 10 and torch.equal(cols, cols.sort().values) and len(cols.unique()) == 10
    assert {0, 3, 7} <= set(cols.tolist())
    assert torch.equal(cols, sample_columns(local, 100, 0.1, (0, 5, 1)))  # same key: same sample (resume)
    assert not torch.equal(cols, sample_columns(local, 100, 0.1, (0, 6, 1)))  # next step: another one
    many = sample_columns(torch.arange(30), 100, 0.1, (0, 0, 0))
    assert torch.equal(many, torch.arange(30))  # more positives than the rate: all positives, no negative


def reference_columns(local, num_local, rate, key):
    """The Partial FC rule by hand: the positive classes, then the other classes in decreasing order of their
    uniform score from generator(*key), until max(ceil(rate·C), #positives) columns; sorted."""
    score = torch.rand(num_local, generator=generator(*key)).tolist()
    positives = sorted({int(c) for c in local if c >= 0})
    others = sorted((c for c in range(num_local) if c not in positives), key=lambda c: -score[c])
    keep = max(math.ceil(rate * num_local), len(positives))
    return sorted(positives + others[: keep - len(positives)])


@pytest.mark.parametrize(("batch", "num_local", "rate"), [(8, 1000, 0.1), (64, 300, 0.1), (5, 7, 0.5), (0, 50, 0.2)])
def test_sample_columns_is_the_positives_then_the_highest_scores(batch, num_local, rate):
    g = torch.Generator().manual_seed(batch + num_local)
    local = torch.randint(-1, num_local, (batch,), generator=g)  # -1: the target is on another rank
    for step in range(3):
        cols = sample_columns(local, num_local, rate, (7, step, 1))
        assert cols.tolist() == reference_columns(local, num_local, rate, (7, step, 1))


def test_partial_fc_draws_resume_from_the_stored_step():
    """A classifier rebuilt from a state dict, or one that loads an earlier state, draws the columns an
    uninterrupted one draws from that step on (the step is counted on the host between loads)."""
    labels = torch.tensor([3, 50, 50, 91])
    x = torch.randn(4, 6)

    def draws(clf, n):
        columns = []
        for _ in range(n):
            columns.append(clf(x, labels).columns.tolist())
        return columns

    whole = draws(Classifier(6, 200, sample_rate=0.1, seed=0), 5)
    assert all(a != b for a, b in zip(whole[:-1], whole[1:], strict=True))  # every step another sample
    first = Classifier(6, 200, sample_rate=0.1, seed=0)
    assert draws(first, 2) == whole[:2]
    state = first.state_dict()
    assert int(state["sample_step"]) == 2
    rebuilt = Classifier(6, 200, sample_rate=0.1, seed=0)
    rebuilt.load_state_dict(state)
    assert draws(rebuilt, 3) == whole[2:]
    first.load_state_dict({**state, "sample_step": torch.tensor(0)})  # back to the start, on a used classifier
    assert draws(first, 2) == whole[:2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_partial_fc_step_on_cuda_has_no_host_sync():
    """When the rate keeps more columns than the batch has labels, a Partial FC head's training step queues
    its work without waiting for the GPU (CUDA sync debug mode turns any sync into an error)."""
    head = build_head("arcface", 64, 100_000, classifier_kwargs={"sample_rate": 0.1, "seed": 0}).cuda()
    x = torch.randn(256, 64, device="cuda", requires_grad=True)
    labels = torch.randint(0, 100_000, (256,), device="cuda")
    head(x, labels)  # the first draw reads the stored step (one sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = head.forward_with_logits(x, labels)
        out.losses["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cols = out.columns - head.classifier.start
    assert cols.device.type == "cuda" and len(cols) == 10_000
    assert torch.isin(labels, out.columns).all()


@pytest.mark.parametrize(("margin", "kwargs"), [("arcface", {"s": 16.0}), ("softmax", {}),
                                               ("subcenter_arcface", {"s": 16.0}), ("adam_softmax", {})])
def test_partial_fc_logits_are_the_full_logits_of_the_sampled_columns(margin, kwargs):
    torch.manual_seed(0)
    full = build_head(margin, 6, 40, **kwargs).double()
    part = build_head(margin, 6, 40, classifier_kwargs={"sample_rate": 0.25, "seed": 0}, **kwargs).double()
    part.load_state_dict(full.state_dict(), strict=False)  # same centres (and biases); sample_step stays
    x, labels = torch.randn(5, 6, dtype=torch.float64), torch.tensor([1, 30, 30, 7, 12])
    losses, logits, cols = part.forward_with_logits(x, labels)
    assert len(cols) == 10 and set(labels.tolist()) <= set(cols.tolist())
    ref = full.margin(full.classifier(x, labels))[:, cols]  # [B, U] the same columns of the full head
    torch.testing.assert_close(logits, ref)
    target = torch.searchsorted(cols, labels)
    torch.testing.assert_close(losses["ce"], F.cross_entropy(ref, target))
    assert int(part.classifier.sample_step) == 1
    part.eval()
    out = part.forward_with_logits(x, labels)
    assert out.logits.shape == (5, 40) and out.columns.tolist() == list(range(40))  # eval: every class


def test_seeded_init_is_the_same_whatever_the_shards():
    whole = seeded_normal(7, 0, 3000, 2, 4, 0.01)  # 3 init blocks, 2 sub-centres
    assert whole.shape == (6000, 4) and abs(whole.std().item() - 0.01) < 1e-3
    torch.testing.assert_close(torch.cat([seeded_normal(7, 0, 1500, 2, 4, 0.01),
                                          seeded_normal(7, 1500, 3000, 2, 4, 0.01)]), whole)
    u = seeded_uniform(7, 0, 3000, 0.3, 0.4)
    parts = [seeded_uniform(7, 0, 1001, 0.3, 0.4), seeded_uniform(7, 1001, 3000, 0.3, 0.4)]
    torch.testing.assert_close(torch.cat(parts), u)
    shards = [Classifier(4, 9, rank=r, world_size=2, seed=1).weight for r in range(2)]
    torch.testing.assert_close(torch.cat(shards), Classifier(4, 9, seed=1).weight)


def test_bad_sample_rate():
    with pytest.raises(FacelabError, match="sample_rate"):
        Classifier(4, 9, sample_rate=0.0)
    with pytest.raises(FacelabError, match="world size 1"):
        Classifier(4, 9, sample_rate=0.5, hard_prototypes=2)


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3)).double()
    net = convert_batchnorm(copy.deepcopy(ref))
    assert isinstance(net[1], GlobalBatchNorm)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    for _ in range(2):
        torch.testing.assert_close(net(x), ref(x))
    torch.testing.assert_close(net.state_dict(), ref.state_dict())  # running mean / unbiased var / count
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x), ref(x))


@pytest.mark.parametrize(("section", "value", "match"), [("model", {"groupface": {"groups": 2}}, "groupface"),
                                                         ("train", {"amp": "fp16"}, "fp16")])
def test_unsupported_multi_process_settings_are_refused(section, value, match):
    cfg = config_from_dict({"model": {"backbone": "tiny", "embedding_size": 16}, section: value})
    with pytest.raises(FacelabError, match=match):
        FaceTask(cfg, 6, PREPROCESS, shard=(0, 2))
    FaceTask(cfg, 6, PREPROCESS)  # one process: fine


@pytest.mark.parametrize(("section", "value", "match"), [("model", {"groupface": {"groups": 2}}, "groupface"),
                                                         ("train", {"amp": "fp16"}, "fp16")])
def test_train_refuses_multi_process_settings_before_reading_data(tmp_path, monkeypatch, section, value, match):
    """Under torchrun the refusal comes before the data is opened (decoding millions of images first
    would waste minutes): here data.train does not exist, and the error is still the setting's."""
    from facelab.distributed import env as dist_env
    from facelab.train.loop import train

    monkeypatch.setattr(dist_env, "setup", lambda device: dist_env.DistEnv(rank=0, world_size=2))
    cfg = config_from_dict({"model": {"backbone": "tiny", "embedding_size": 16}, section: value,
                            "data": {"train": str(tmp_path / "missing")},
                            "output": str(tmp_path / "run")})
    with pytest.raises(FacelabError, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists()
