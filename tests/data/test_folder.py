import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facelab.data.folder import ImageFolderDataset
from facelab.data.samplers import EpochBatchSampler
from facelab.errors import FacelabError


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("bob", "alice", "carol"):
        for k in range(3):
            p = tmp_path / name / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    return tmp_path


def test_labels_follow_sorted_identity_names(folder):
    ds = ImageFolderDataset(folder)
    assert ds.classes == ["alice", "bob", "carol"] and ds.num_classes == 3 and len(ds) == 9
    image, label = ds[4]
    assert label == 1 and image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    bgr = cv2.imread(str(folder / "bob" / "1.png"))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), bgr[..., ::-1])  # RGB
    flipped, _ = ds[(4, True)]
    assert torch.equal(flipped, image.flip(2))


def test_preload_and_workers_give_identical_batches(folder):
    lazy, cached = ImageFolderDataset(folder), ImageFolderDataset(folder, preload=True)
    sampler = EpochBatchSampler(len(lazy), 4, seed=1)
    one = list(DataLoader(lazy, batch_sampler=sampler, num_workers=0))
    two = list(DataLoader(lazy, batch_sampler=sampler, num_workers=2))
    mem = list(DataLoader(cached, batch_sampler=sampler, num_workers=0))
    for (a, la), (b, lb), (c, lc) in zip(one, two, mem, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.equal(la, lb) and torch.equal(la, lc)


def test_bad_folders(folder, tmp_path_factory):
    with pytest.raises(FacelabError, match="does not exist"):
        ImageFolderDataset(folder / "nope")
    empty = tmp_path_factory.mktemp("empty")
    (empty / "x").mkdir()
    with pytest.raises(FacelabError, match="no images found"):
        ImageFolderDataset(empty)
    cv2.imwrite(str(folder / "bob" / "big.png"), np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(FacelabError, match=r"big.png: size"):
        ImageFolderDataset(folder, preload=True)
    (folder / "carol" / "0.png").write_bytes(b"broken")
    with pytest.raises(FacelabError, match="0.png: cannot decode"):
        ImageFolderDataset(folder)[7]  # alice 0-2, bob 3-6 (with big.png), carol 7-
