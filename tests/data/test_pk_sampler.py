"""P x K and siamese samplers: batch structure, determinism, resume, rank shares, config errors."""

import numpy as np
import pytest

from facelab.config import config_from_dict
from facelab.data.pk_sampler import PKBatchSampler, SiamesePairSampler, build_label_sampler
from facelab.errors import FacelabError

# 7 identities, 1 to 6 images each, labels not sorted (as a shuffled record file may be)
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(7), [1, 2, 3, 4, 5, 6, 3]))


def _epochs(sampler, epochs=3):
    out = []
    for e in range(epochs):
        sampler.set_position(e)
        out.append(list(sampler))
    return out


def test_pk_batches_hold_p_identities_of_k_images():
    s = PKBatchSampler(LABELS, batch_size=8, k=2, seed=1)
    assert len(s) == len(LABELS) // 8
    seen = set()
    for batch in (b for epoch in _epochs(s, 5) for b in epoch):
        idx = [i for i, _ in batch]
        ids = LABELS[idx].reshape(4, 2)  # [P, K]
        assert (ids == ids[:, :1]).all()  # each group of K is one identity
        for group in np.asarray(idx).reshape(4, 2):
            if (LABELS == LABELS[group[0]]).sum() >= 2:
                assert group[0] != group[1]  # without replacement when the identity has K images
        seen.update(ids[:, 0].tolist())
    assert seen == set(range(7))


def test_pk_is_deterministic_and_resumes_mid_epoch():
    a, b = PKBatchSampler(LABELS, 8, 4, seed=3), PKBatchSampler(LABELS, 8, 4, seed=3)
    full = _epochs(a, 2)
    assert full == _epochs(b, 2)
    b.set_position(1, 2)
    assert len(b) == len(full[1]) - 2 and list(b) == full[1][2:]
    assert _epochs(PKBatchSampler(LABELS, 8, 4, seed=4), 1) != full[:1]


@pytest.mark.parametrize("make", [
    lambda r, w: PKBatchSampler(LABELS, 8, 2, seed=0, rank=r, world_size=w),
    lambda r, w: SiamesePairSampler(LABELS, 8, 0.5, seed=0, rank=r, world_size=w),
])
def test_rank_shares_together_equal_the_single_process_batch(make):
    single = _epochs(make(0, 1), 2)
    shares = [_epochs(make(r, 2), 2) for r in range(2)]
    for e in range(2):
        for b in range(len(single[e])):
            assert shares[0][e][b] + shares[1][e][b] == single[e][b]
            assert len(shares[0][e][b]) == 4


def test_siamese_pairs_follow_the_positive_fraction():
    s = SiamesePairSampler(LABELS, batch_size=10, positive_fraction=0.4, seed=2)
    for batch in _epochs(s, 4)[0] + _epochs(s, 4)[3]:
        idx = np.asarray([i for i, _ in batch]).reshape(5, 2)  # [pairs, 2]
        same = LABELS[idx[:, 0]] == LABELS[idx[:, 1]]
        assert same.sum() == 2  # round(0.4 * 5)
        assert (idx[same, 0] != idx[same, 1]).all()  # two distinct images of one identity


@pytest.mark.parametrize(("data", "match"), [
    ({"sampler": "pk", "pk_k": 3, "batch_size": 8}, "multiple of 3"),
    ({"sampler": "pk", "pk_k": 2, "batch_size": 16}, "P = 8 identities"),
    ({"sampler": "pk", "pk_k": 1, "batch_size": 16}, "config data.pk_k: 1 is invalid"),
    ({"sampler": "siamese", "positive_fraction": 1.5, "batch_size": 8},
     "config data.positive_fraction"),
    ({"sampler": "pk", "adaptive_sampling": {"enabled": True}},
     "config data.sampler: 'pk' is invalid"),
    ({"sampler": "random"}, "config data.sampler: 'random' is invalid"),
])
def test_bad_sampler_config_is_one_clear_error(data, match):
    """Values are refused when the config is built, the batch/identity arithmetic by the sampler."""
    with pytest.raises(FacelabError, match=match):
        build_label_sampler(LABELS, config_from_dict({"data": data}))


def test_uniform_leaves_the_default_sampler():
    assert build_label_sampler(LABELS, config_from_dict({})) is None
    pk = config_from_dict({"data": {"sampler": "pk", "batch_size": 8}})
    assert isinstance(build_label_sampler(LABELS, pk), PKBatchSampler)
