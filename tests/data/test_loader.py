"""make_loader: persistent workers give the single-process batches, epoch after epoch, from any
position."""

import os

import pytest
import torch
from torch.utils.data import Dataset

from facelab.data.loader import make_loader, to_device
from facelab.data.samplers import EpochBatchSampler
from facelab.errors import FacelabError


class _Items(Dataset):
    """Item (index, flip) -> (tensor [2]: index and flip, label index % 3, pid of the process that
    loaded it)."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, item):
        index, flip = item
        return torch.tensor([index, int(flip)]), index % 3, os.getpid()


def _epochs(loader, sampler, positions):
    """[(items [B, 2], labels [B], pids)] of every batch, entering each (epoch, batch) position in
    turn."""
    out = []
    for epoch, batch in positions:
        sampler.set_position(epoch, batch)
        out += [(x, y, set(p.tolist())) for x, y, p in loader]
    return out


def test_workers_match_single_process_across_epochs():
    positions = [(0, 0), (1, 0), (2, 3)]  # a resumed epoch starts mid-way
    s0, s2 = EpochBatchSampler(20, 4, seed=7), EpochBatchSampler(20, 4, seed=7)
    ref = _epochs(make_loader(_Items(), s0, 0, torch.device("cpu")), s0, positions)
    # created once, as in the training loop
    loader = make_loader(_Items(), s2, 2, torch.device("cpu"))
    got = _epochs(loader, s2, positions)
    assert len(ref) == len(got) == 5 + 5 + 2
    for (x0, y0, _), (x2, y2, _) in zip(ref, got, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert {pid for _, _, p in ref for pid in p} == {os.getpid()}
    first = {pid for _, _, p in got[:5] for pid in p}
    later = {pid for _, _, p in got[5:] for pid in p}
    # the same worker processes serve every epoch
    assert os.getpid() not in first and later <= first


def test_options_and_bad_values():
    sampler = EpochBatchSampler(20, 4, seed=0)
    assert make_loader(_Items(), sampler, 0, torch.device("cpu")).pin_memory is False
    # built, never iterated
    cuda = make_loader(_Items(), sampler, 1, torch.device("cuda"), prefetch_factor=3)
    assert cuda.pin_memory and cuda.persistent_workers and cuda.prefetch_factor == 3
    for workers in (-1, 1.5, True):
        with pytest.raises(FacelabError, match="data.workers"):
            make_loader(_Items(), sampler, workers, torch.device("cpu"))
    with pytest.raises(FacelabError, match="prefetch_factor"):
        make_loader(_Items(), sampler, 1, torch.device("cpu"), prefetch_factor=0)


def test_to_device_moves_tensors_and_dicts():
    images, labels, extras = torch.zeros(2, 3), torch.arange(2), {"hard": torch.ones(2)}
    out = to_device([images, labels, extras], torch.device("meta"))
    assert out[0].is_meta and out[1].is_meta and out[2]["hard"].is_meta and out[0].shape == (2, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_starting_epochs_leaves_the_global_rng_alone(workers):
    """The training step's random draws (ElasticFace margins, random miners) come from torch's
    global RNG, which a checkpoint restores; starting an epoch must not consume it, or a resumed run
    draws differently."""
    sampler = EpochBatchSampler(20, 4, seed=0)
    loader = make_loader(_Items(), sampler, workers, torch.device("cpu"))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    for epoch in range(2):
        sampler.set_position(epoch)
        next(iter(loader))
    assert torch.equal(torch.rand(3), expected)
