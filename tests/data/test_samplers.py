"""build_sampler picks the sampler the config asks for (the same batches as building it directly),
and every batch sampler follows the ResumableBatchSampler protocol the training loop relies on."""

import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.data.batch_sampler import ResumableBatchSampler
from facelab.data.multi import DatasetShareSampler, UnionDataset
from facelab.data.pk_sampler import PKBatchSampler, SiamesePairSampler
from facelab.data.samplers import AdaptiveBatchSampler, EpochBatchSampler, build_sampler
from facelab.distill.sampling import DDLBatchSampler
from facelab.errors import FacelabError

LABELS = np.repeat(np.arange(6), 4)  # 6 identities x 4 images


class Toy(torch.utils.data.Dataset):
    """`n` items of `classes` classes; labels cycle through the classes."""

    def __init__(self, n=24, classes=6):
        self.labels, self.num_classes = np.arange(n) % classes, classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        return torch.zeros(3, 4, 4), int(self.labels[item[0]])


def _cfg(**data):
    return config_from_dict({"seed": 7, "data": {"train": "unused", "batch_size": 8, **data}})


def _epochs(sampler, epochs=(0, 1)):
    out = []
    for e in epochs:
        sampler.set_position(e, 0)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("rank", [0, 1])
def test_uniform_and_adaptive(rank):
    ds = Toy()
    built = build_sampler(_cfg(flip=False), ds, rank, 2)
    assert type(built) is EpochBatchSampler
    direct = EpochBatchSampler(len(ds), 8, 7, False, rank=rank, world_size=2)
    assert _epochs(built) == _epochs(direct)
    ads = {"enabled": True, "up": 2.0, "down": 0.5, "min_weight": 0.1, "max_weight": 9.0}
    built = build_sampler(_cfg(adaptive_sampling=ads), ds, rank, 2)
    direct = AdaptiveBatchSampler(len(ds), 8, 7, True, 2.0, 0.5, 0.1, 9.0, rank=rank,
                                  world_size=2)
    assert type(built) is AdaptiveBatchSampler
    for s in (built, direct):
        s.feedback(0, np.arange(8) % 3 == 0)
    assert _epochs(built) == _epochs(direct)
    assert (built.bounds, built.up, built.down) == ((0.1, 9.0), 2.0, 0.5)


def test_pk_and_siamese():
    ds = Toy()
    built = build_sampler(_cfg(sampler="pk", pk_k=2), ds, 1, 2)
    assert type(built) is PKBatchSampler
    direct = PKBatchSampler(ds.labels, 8, 2, 7, True, rank=1, world_size=2)
    assert _epochs(built) == _epochs(direct)
    built = build_sampler(_cfg(sampler="siamese", positive_fraction=0.25), ds)
    assert type(built) is SiamesePairSampler
    assert _epochs(built) == _epochs(SiamesePairSampler(ds.labels, 8, 0.25, 7))


def test_datasets():
    union = UnionDataset([Toy(12, 3), Toy(20, 4)], ["a", "b"])
    entries = [{"path": "a", "weight": 1.0}, {"path": "b", "weight": 3.0}]
    cfg = config_from_dict({"seed": 7, "data": {"datasets": entries, "batch_size": 8}})
    built = build_sampler(cfg, union, 1, 2)
    assert type(built) is DatasetShareSampler
    direct = DatasetShareSampler(union.sizes, [1.0, 3.0], 8, 7, True, rank=1, world_size=2)
    assert _epochs(built) == _epochs(direct)


def test_refusals_name_the_config_field():
    with pytest.raises(FacelabError, match="^config data.batch_size: batch size 64 exceeds the 24 "
                                           "training images$"):
        build_sampler(_cfg(batch_size=64), Toy())
    with pytest.raises(FacelabError, match="^config data.batch_size: batch size 8 does not split "):
        build_sampler(_cfg(), Toy(), 0, 3)
    with pytest.raises(FacelabError, match="^config data.sampler=pk: "):
        build_sampler(_cfg(sampler="pk", batch_size=64), Toy())


def _every_sampler():
    ds, easy = Toy(), np.tile([True, True, False, False], 6)
    return [EpochBatchSampler(24, 8, 0), AdaptiveBatchSampler(24, 8, 0),
            PKBatchSampler(LABELS, 8, 2, 0), SiamesePairSampler(LABELS, 8, 0.5, 0),
            DatasetShareSampler([12, 20], [1.0, 1.0], 8, 0),
            DDLBatchSampler(ds.labels, easy, ~easy, 8, 2, 1, 1, 0)]


@pytest.mark.parametrize("sampler", _every_sampler(), ids=lambda s: type(s).__name__)
def test_protocol(sampler):
    assert isinstance(sampler, ResumableBatchSampler)
    sampler.set_position(1, 1)
    assert len(sampler) == len(list(sampler)) > 0
    assert isinstance(sampler.wants_feedback, bool)
    state = sampler.state_dict()
    assert isinstance(state, dict)
    sampler.load_state_dict(state)
    if sampler.wants_feedback:
        return
    assert state == {}
    before = _epochs(sampler, (1, 2))
    sampler.feedback(0, np.zeros(8, bool))  # ignored
    sampler.load_state_dict({})
    assert _epochs(sampler, (1, 2)) == before


def test_only_adaptive_sampling_wants_feedback():
    assert [type(s).__name__ for s in _every_sampler() if s.wants_feedback] == [
        "AdaptiveBatchSampler"]
    adaptive = AdaptiveBatchSampler(24, 8, 0)
    adaptive.feedback(0, np.zeros(8, bool))
    assert set(adaptive.state_dict()) == {"weights", "epoch_weights", "drawn_epoch"}
