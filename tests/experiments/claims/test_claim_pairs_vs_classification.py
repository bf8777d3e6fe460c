"""pairs_vs_classification: the sampler replay against the training loop's own batches and
against a loop, the centroid cosines and the met / never-met gap against loops, the claim in quick
mode."""

import itertools
import math

import numpy as np
import pytest

import facelab.data.samplers as samplers
from facelab.data import open_training_set
from facelab.data.pk_sampler import PKBatchSampler
from facelab.experiments.claims.base import VERDICTS, Context, paired_rule, seed_rule
from facelab.experiments.claims.pairs_vs_classification import (
    NAME,
    _plan,
    _split,
    centroid_cosines,
    measure,
    met_gap,
    met_matrix,
)


def loop_replay(labels, batch, k, seed, steps):
    """The training loop's walk (facelab.train.loop._loop) over a P x K sampler: the set of
    identity pairs met in the first `steps` batches."""
    sampler = PKBatchSampler(labels, batch, k, seed)
    per_epoch, step, met = len(sampler), 0, set()
    while step < steps:
        sampler.set_position(*divmod(step, per_epoch))
        for items in sampler:
            ids = {int(labels[i]) for i, _ in items}
            met |= {(a, b) for a in ids for b in ids}
            step += 1
            if step == steps:
                break
    return met


def test_met_matrix_against_the_loop_walk():
    labels = np.repeat(np.arange(30), 5)  # [150]: 30 identities x 5 photos
    for steps in (1, 7, 23):  # 18 batches per epoch: 23 crosses an epoch boundary
        met = met_matrix(labels, 8, 4, seed=3, steps=steps)
        want = loop_replay(labels, 8, 4, 3, steps)
        assert {(int(a), int(b)) for a, b in zip(*np.nonzero(met), strict=True)} == want
    # P = C: every batch holds every identity, so every pair met after one step
    assert met_matrix(np.repeat(np.arange(4), 3), 8, 2, seed=0, steps=1).all()


def test_flips_do_not_change_the_batches():
    labels = np.repeat(np.arange(10), 4)
    a, b = PKBatchSampler(labels, 8, 4, 5, flip=True), PKBatchSampler(labels, 8, 4, 5, flip=False)
    assert [[i for i, _ in x] for x in a] == [[i for i, _ in x] for x in b]


def test_centroid_cosines_and_gap_against_loops():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 4)  # [24]
    emb = rng.normal(size=(24, 5))
    got = centroid_cosines(emb, labels)
    dirs = []
    for c in range(6):
        x = [e / np.linalg.norm(e) for e, lab in zip(emb, labels, strict=True) if lab == c]
        m = np.sum(x, axis=0)
        dirs.append(m / np.linalg.norm(m))
    for i, j in itertools.product(range(6), repeat=2):
        assert math.isclose(got[i, j], float(dirs[i] @ dirs[j]), abs_tol=1e-12)
    met = rng.random((6, 6)) < 0.5
    met = met | met.T
    never, once = [], []
    for i in range(6):
        for j in range(i + 1, 6):
            (once if met[i, j] else never).append(got[i, j])
    gap, fraction = met_gap(got, met)
    assert math.isclose(gap, np.mean(never) - np.mean(once), abs_tol=1e-12)
    assert fraction == len(once) / 15
    assert math.isnan(met_gap(got, np.ones((6, 6), bool))[0])  # nothing never met


def test_paired_rule_against_a_hand_computation():
    a, b = [0.030, 0.010, 0.025], [0.020, 0.000, 0.012]  # d = 0.010, 0.010, 0.013
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    verdict, text = paired_rule(a, b)
    assert mean > 2 * sd and verdict == "shown" and f"{2 * sd:.4g}" in text
    # the unpaired rule cannot see it: the shared partition noise dominates each side
    assert seed_rule(a, b)[0] == "inconclusive"
    assert paired_rule(b, a)[0] == "not shown"
    assert paired_rule([0.02, 0.00, 0.03], [0.00, 0.01, 0.00])[0] == "inconclusive"
    assert paired_rule([0.9, 0.9], [0.1, 0.1])[0] == "inconclusive"  # two seeds
    assert paired_rule([0.9], [0.1])[0] == "inconclusive"


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick_and_the_replay_matches_training(tmp_path, monkeypatch):
    trained = []  # the batches every training run's P x K sampler handed the loop

    def recording(labels, cfg, rank=0, world_size=1):
        sampler = build(labels, cfg, rank, world_size)
        if isinstance(sampler, PKBatchSampler):
            seen = []
            trained.append((cfg, seen))
            iterate = sampler.__iter__

            class Recorder(type(sampler)):
                def __iter__(self):
                    for items in iterate():
                        seen.append([i for i, _ in items])
                        yield items

            sampler.__class__ = Recorder
        return sampler

    build = samplers.build_label_sampler
    monkeypatch.setattr(samplers, "build_label_sampler", recording)
    ctx = Context(root=tmp_path / "runs", data=tmp_path / "data", figures=tmp_path / "fig",
                  quick=True, seeds=(0,))
    r = measure(ctx)
    assert r.name == NAME and r.verdict in VERDICTS and r.verdict == "inconclusive"
    assert r.paper and r.measurement and r.rule and "| regime |" in r.table
    assert r.figures and all((tmp_path / "fig").joinpath(p).exists() for p, _ in r.figures)
    assert len(trained) == 2  # one pair-loss run per regime in quick mode
    plan = _plan(ctx)
    for regime, (cfg, seen) in zip(plan["regimes"], trained, strict=True):
        labels = open_training_set(_split(ctx, plan, regime).train, check_images=False).labels
        assert len(seen) >= cfg.train.steps
        want = {(int(a), int(b)) for batch in seen[: cfg.train.steps]
                for a in labels[batch] for b in labels[batch]}
        met = met_matrix(labels, cfg.data.batch_size, cfg.data.pk_k, cfg.seed, cfg.train.steps)
        assert {(int(a), int(b)) for a, b in zip(*np.nonzero(met), strict=True)} == want
