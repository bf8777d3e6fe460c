"""Multi-dataset union (label offsets) and the fixed-share batch sampler; the data.datasets
config."""

import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.data.multi import (
    DatasetShareSampler,
    UnionDataset,
    batch_shares,
    dataset_of,
    open_training_data,
)
from facelab.errors import FacelabError


class Toy(torch.utils.data.Dataset):
    def __init__(self, n, classes, tag):
        self.n, self.num_classes, self.tag = n, classes, tag

    def __len__(self):
        return self.n

    def __getitem__(self, item):
        i, flip = item
        return torch.full((3, 4, 4), self.tag), i % self.num_classes


def test_union_offsets_labels_and_dataset_of():
    u = UnionDataset([Toy(10, 3, 1), Toy(7, 4, 2)], ["a", "b"])
    assert u.offsets == [0, 3, 7] and u.num_classes == 7 and len(u) == 17
    image, label = u[(12, False)]  # dataset b, local index 2 -> local class 2 -> global 3 + 2
    assert image[0, 0, 0] == 2 and label == 5
    assert u[(4, True)][1] == 1
    labels = torch.tensor([0, 2, 3, 6])
    assert dataset_of(labels, torch.tensor(u.offsets)).tolist() == [0, 0, 1, 1]
    with pytest.raises(FacelabError, match="names must differ"):
        UnionDataset([Toy(3, 1, 0), Toy(3, 1, 0)], ["a", "a"])


def test_shares_follow_the_weights():
    assert batch_shares([1, 1], 64) == [32, 32]
    assert batch_shares([1, 3], 64) == [16, 48]
    assert sum(batch_shares([1, 2, 5], 63)) == 63
    assert batch_shares([1, 1000], 8)[0] == 1  # every dataset keeps at least one image


def test_every_batch_has_the_fixed_share_and_resume_and_ranks():
    sizes = [50, 200]
    s = DatasetShareSampler(sizes, [1.0, 3.0], 16, seed=7)
    assert s.shares == [4, 12] and len(s) == min(50 // 4, 200 // 12)
    batches = list(s)
    for batch in batches:
        from_a = sum(i < 50 for i, _ in batch)
        assert len(batch) == 16 and from_a == 4
    first_a = [i for b in batches for i, _ in b if i < 50]
    assert len(set(first_a)) == len(first_a)  # no repeat inside an epoch
    s.set_position(0, 3)
    assert list(s) == batches[3:]  # resume mid-epoch
    s.set_position(1, 0)
    assert list(s) != batches
    parts = [DatasetShareSampler(sizes, [1.0, 3.0], 16, seed=7, rank=r, world_size=2)
             for r in (0, 1)]
    for whole, p0, p1 in zip(batches, *parts, strict=True):
        assert sorted(p0 + p1) == sorted(whole) and len(p0) == len(p1) == 8
        assert sum(i < 50 for i, _ in p0) == 2  # every rank gets its fixed part of each dataset


def test_config_lists_of_datasets(tmp_path):
    entries = [{"path": "x", "weight": 2}, {"path": "y", "name": "B"}]
    cfg = config_from_dict({"data": {"datasets": entries}})
    assert cfg.data.datasets[0].weight == 2.0 and cfg.data.datasets[1].name == "B"
    with pytest.raises(FacelabError, match="unknown key 'data.datasets\\[0\\].wieght'"):
        config_from_dict({"data": {"datasets": [{"path": "x", "wieght": 2}]}})
    with pytest.raises(FacelabError, match="not both"):
        config_from_dict({"data": {"train": "t", "datasets": [{"path": "x"}]}})
    with pytest.raises(FacelabError, match="weight"):
        config_from_dict({"data": {"datasets": [{"path": "x", "weight": 0}]}})
    with pytest.raises(FacelabError, match="crossing_dropout"):
        config_from_dict({"head": {"crossing_dropout": 0.1}})


def test_open_training_data_reads_folders(tmp_path):
    import cv2

    for name, ids in (("A", 2), ("B", 3)):
        for c in range(ids):
            (tmp_path / name / f"id{c}").mkdir(parents=True)
            for k in range(2):
                cv2.imwrite(str(tmp_path / name / f"id{c}" / f"{k}.png"),
                            np.full((8, 8, 3), 10 * c, np.uint8))
    entries = [{"path": str(tmp_path / "A")}, {"path": str(tmp_path / "B")}]
    cfg = config_from_dict({"data": {"datasets": entries}})
    u = open_training_data(cfg.data)
    assert u.names == ["A", "B"] and u.offsets == [0, 2, 5]
    assert u[(6, False)][1] == 2 + 1  # B image 2 is of B class 1
