"""Easy/hard batches for DDL: sampler structure, resume, rank shares, attribute split, hard views."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facelab.config import DistillConfig
from facelab.distill.sampling import DDLBatchSampler, DistillDataset, attribute_split, degrade
from facelab.errors import FacelabError
from facelab.io import encode_image

LABELS = np.repeat(np.arange(10), 6)  # 10 identities x 6 images
EASY = np.tile([True, True, True, False, False, False], 10)
HARD = ~EASY


def sampler(**kw):
    args = dict(batch_size=24, identities=4, n_easy=2, n_hard=2, seed=3, exclude=(7,))
    return DDLBatchSampler(LABELS, EASY, HARD, **{**args, **kw})


def test_every_unit_holds_easy_and_hard_images_of_one_identity():
    s = sampler()
    assert len(s) == 60 // 24
    seen = set()
    for batch in s:
        assert len(batch) == 24
        for u in range(4):
            unit = batch[6 * u : 6 * u + 6]
            idx = [i for i, *_ in unit]
            groups = [g for _, _, g, _ in unit]
            assert groups == [0, 0, 1, 1, -1, -1]
            assert len({LABELS[i] for i in idx[:4]}) == 1 and len(set(idx[:4])) == 4
            assert EASY[idx[:2]].all() and HARD[idx[2:4]].all()
            seen |= {int(LABELS[i]) for i in idx}
    assert 7 not in seen  # held-out identity: never drawn, not even as filler


def test_position_resume_and_rank_shares():
    s = sampler()
    s.set_position(4, 0)
    full = list(s)
    s.set_position(4, 1)
    assert list(s) == full[1:] and len(s) == len(full) - 1
    s.set_position(5, 0)
    assert list(s) != full  # another epoch, other batches
    r0, r1 = sampler(rank=0, world_size=2), sampler(rank=1, world_size=2)
    for s_ in (r0, r1):
        s_.set_position(4, 0)
    assert [a + b for a, b in zip(r0, r1, strict=True)] == full


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        sampler(batch_size=26)
    with pytest.raises(ValueError, match="split"):
        sampler(world_size=3)
    with pytest.raises(ValueError, match="identities have"):
        sampler(n_hard=4)
    same = DDLBatchSampler(LABELS, np.ones(60, bool), np.ones(60, bool), 24, 4, 2, 2, 0)  # degradation split
    for batch in same:
        for u in range(4):
            assert len({i for i, *_ in batch[6 * u : 6 * u + 4]}) == 4  # easy and hard views of distinct images


def test_attribute_split_reads_the_csv(tmp_path):
    for ident in ("a", "b"):
        (tmp_path / "train" / ident).mkdir(parents=True)
        for n in range(2):
            (tmp_path / "train" / ident / f"{n}.jpg").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    rows = ["image,yaw_deg,resolution", "a/0.jpg,-10,60", "a/1.jpg,-50,60", "b/0.jpg,35,60", "b/1.jpg,5,20"]
    (tmp_path / "attr.csv").write_text("\n".join(rows) + "\n")
    from facelab.data.folder import ImageFolderDataset

    ds = ImageFolderDataset(tmp_path / "train")
    cfg = DistillConfig(name="ddl", hard_min_yaw=45.0, hard_max_resolution=30.0)
    easy, hard = attribute_split(ds, tmp_path / "attr.csv", cfg)
    assert easy.tolist() == [True, False, False, False]  # |yaw| < 30 and resolution >= 40
    assert hard.tolist() == [False, True, False, True]  # |yaw| >= 45 or resolution < 30; b/0 is neither
    (tmp_path / "attr.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(FacelabError, match="b/1.jpg"):
        attribute_split(ds, tmp_path / "attr.csv", cfg)


class Faces(torch.utils.data.Dataset):
    labels = np.array([0, 0, 1, 1])
    num_classes = 2

    def __len__(self):
        return 4

    def __getitem__(self, item):
        index, flip = item
        g = np.random.default_rng(index)
        img = np.kron(g.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # [64, 64, 3]
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self.labels[index])


def test_hard_views_are_seeded_per_item_and_batches_carry_the_group():
    cfg = DistillConfig(name="ddl", split="degradation", degrade_side=[8, 12])
    ds = DistillDataset(Faces(), cfg)
    easy, _, extras = ds[(1, False, 0, 5)]
    assert torch.equal(easy, Faces()[(1, False)][0]) and extras["ddl_group"].item() == 0
    hard1, hard2, other = ds[(1, False, 1, 5)][0], ds[(1, False, 1, 5)][0], ds[(1, False, 1, 6)][0]
    assert torch.equal(hard1, hard2) and not torch.equal(hard1, other)
    assert (hard1.float() - easy.float()).abs().mean() > 5  # 64 px down to 8-12 px loses the 8 px blocks
    loader = DataLoader(ds, batch_sampler=[[(0, False, 0, 1), (1, True, 1, 2), (2, False, -1, 3)]])
    images, labels, extras = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and labels.tolist() == [0, 0, 1]
    assert extras["ddl_group"].tolist() == [0, 1, -1]


def test_degrade_without_degradation_is_nearly_the_identity():
    grey = np.random.default_rng(0).integers(0, 256, (8, 8, 1))  # grey: JPEG's chroma subsampling is moot
    img = np.kron(grey, np.ones((4, 4, 3))).astype(np.uint8)  # [32, 32, 3]
    cfg = DistillConfig(degrade_side=[32, 32], degrade_blur=0.0, degrade_noise=0.0, degrade_jpeg=[100, 100])
    out = degrade(img, np.random.default_rng(0), cfg)
    assert out.shape == img.shape and np.abs(out.astype(int) - img).mean() < 2  # only JPEG rounding left
