import logging
import struct

import numpy as np
import pytest
import torch

from facelab.cli import main
from facelab.data.convert import convert, detect_format
from facelab.data.folder import ImageFolderDataset
from facelab.data.recordio import MAGIC, RecordIODataset, pack_image, write_recordio
from facelab.errors import FacelabError
from facelab.io import encode_image


def _tree_bytes(root):
    """{identity index: [file bytes, in file-name order]} of an image folder (names may differ)."""
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    return {i: [f.read_bytes() for f in sorted(d.iterdir())] for i, d in enumerate(dirs)}


@pytest.fixture
def folder(tmp_path):
    """Three identities, mixed JPEG/PNG, one identity with no image."""
    root = tmp_path / "faces"
    rng = np.random.default_rng(1)
    for name, n in [("alice", 3), ("bob", 2), ("carol", 0), ("dave", 1)]:
        (root / name).mkdir(parents=True)
        for j in range(n):
            ext = ".jpg" if j % 2 == 0 else ".png"
            image = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
            (root / name / f"img{j}{ext}").write_bytes(encode_image(image, ext, quality=70))
    return root


def test_folder_rec_folder_keeps_bytes(folder, tmp_path):
    counts = convert(folder, tmp_path / "rec", "rec")
    assert counts == {"src_format": "folder", "dst_format": "rec", "images": 6, "classes": 4,
                      "height": 10, "width": 8, "skipped": 0, "damaged": []}
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["property", "train.idx", "train.rec"]
    assert (tmp_path / "rec" / "property").read_text().strip() == "4,10,8"
    back = tmp_path / "back"
    assert convert(tmp_path / "rec", back)["dst_format"] == "folder"
    assert _tree_bytes(back) == _tree_bytes(folder)
    assert sorted(p.name for p in back.iterdir()) == ["0", "1", "2", "3", "property"]  # no skipped.csv
    assert sorted(p.name for p in (back / "0").iterdir()) == ["00000000.jpg", "00000001.png", "00000002.jpg"]


def test_rec_is_a_drop_in_for_the_folder(folder, tmp_path):
    convert(folder, tmp_path / "x.rec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "property", "x.idx", "x.rec"]
    rec, ref = RecordIODataset(tmp_path / "x.rec"), ImageFolderDataset(folder)
    assert rec.num_classes == ref.num_classes == 4 and np.array_equal(rec.labels, ref.labels)
    for i in range(len(ref)):
        for flip in (False, True):
            a, b = rec[(i, flip)], ref[(i, flip)]
            assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_rec_list_rec_is_identical(folder, tmp_path):
    convert(folder, tmp_path / "a", "rec")
    counts = convert(tmp_path / "a" / "train.rec", tmp_path / "l" / "list.txt")
    assert counts["dst_format"] == "list" and counts["images"] == 6
    lines = (tmp_path / "l" / "list.txt").read_text().splitlines()
    assert lines[0] == "0/00000000.jpg 0" and lines[-1] == "3/00000005.jpg 3"
    assert detect_format(tmp_path / "l") == "list"
    convert(tmp_path / "l", tmp_path / "b", "recordio")
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _damaged_plain_rec(path):
    """4 plain image records (labels 0 1 0 1, no identity header, no .idx); record 1 loses its magic.
    Returns (path, byte offset of record 1, encoded images)."""
    blobs = [encode_image(np.full((4, 6, 3), 40 * k, np.uint8), ".png") for k in range(4)]
    blob, offsets = b"", []
    for k, image in enumerate(blobs):
        payload = pack_image(k % 2, image, id=k)
        offsets.append(len(blob))
        blob += struct.pack("<II", MAGIC if k != 1 else 0, len(payload)) + payload + b"\0" * (-len(payload) % 4)
    path.write_bytes(blob)
    return path, offsets[1], blobs


def test_damaged_plain_record_is_counted(tmp_path, caplog):
    rec, off, blobs = _damaged_plain_rec(tmp_path / "plain.rec")
    counts = convert(rec, tmp_path / "out")
    assert (counts["images"], counts["classes"], counts["skipped"]) == (3, 2, 1)
    assert [d.offset for d in counts["damaged"]] == [off] and "no magic" in counts["damaged"][0].reason
    assert _tree_bytes(tmp_path / "out") == {0: [blobs[0], blobs[2]], 1: [blobs[3]]}
    lines = (tmp_path / "out" / "skipped.csv").read_text().splitlines()
    assert lines[0] == "offset,reason" and len(lines) == 2 and lines[1].startswith(f"{off},")
    assert "plain.rec: corrupt record at byte offset" in lines[1] and "," not in lines[1][len(f"{off},"):]
    with caplog.at_level(logging.WARNING, logger="facelab"):  # the CLI: one warning line, count and offset
        assert main(["convert", str(rec), str(tmp_path / "o.rec")]) == 0
    warning = [r.getMessage() for r in caplog.records if r.name == "facelab" and r.levelno == logging.WARNING]
    assert len(warning) == 1 and f"1 damaged records skipped, the first at byte offset {off}" in warning[0]
    assert str(tmp_path / "skipped.csv") in warning[0] and (tmp_path / "skipped.csv").is_file()
    assert len(RecordIODataset(tmp_path / "o.rec")) == 3


def test_damaged_record_with_identity_header_is_counted(folder, tmp_path):
    convert(folder, tmp_path / "a", "rec")
    rec = tmp_path / "a" / "train.rec"
    off = int((tmp_path / "a" / "train.idx").read_text().splitlines()[2].split("\t")[1])  # image 1 (alice)
    data = bytearray(rec.read_bytes())
    data[off + 4 : off + 8] = struct.pack("<I", 1 << 28)  # its length now runs past the end of the file
    rec.write_bytes(bytes(data))
    for name, drop_idx in (("b", False), ("c", True)):
        if drop_idx:
            (tmp_path / "a" / "train.idx").unlink()
        counts = convert(tmp_path / "a", tmp_path / name, "list")
        assert (counts["images"], counts["skipped"], [d.offset for d in counts["damaged"]]) == (5, 1, [off])
        assert (tmp_path / name / "skipped.csv").read_text().startswith(f"offset,reason\n{off},")
        assert len((tmp_path / name / "list.txt").read_text().splitlines()) == 5
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "skipped.csv").write_text("offset,reason\n")
    with pytest.raises(FacelabError, match="skipped.csv: already exists"):  # never written over
        convert(folder, tmp_path / "d" / "x.rec")


def test_unsorted_list_to_rec(tmp_path):
    root = tmp_path / "lst"
    (root / "imgs").mkdir(parents=True)
    blobs = [encode_image(np.full((4, 4, 3), v, np.uint8), ".png") for v in (10, 20, 30)]
    for i, blob in enumerate(blobs):
        (root / "imgs" / f"my face {i}.png").write_bytes(blob)
    (root / "list.txt").write_text("imgs/my face 0.png 2\n\nimgs/my face 1.png 0\nimgs/my face 2.png 2\n")
    (root / "property").write_text("5,4,4\n")
    assert convert(root / "list.txt", tmp_path / "r.rec")["classes"] == 5
    ds = RecordIODataset(tmp_path / "r.rec")
    assert [ds.raw(i) for i in range(3)] == [(blobs[1], 0), (blobs[0], 2), (blobs[2], 2)]


def test_bad_inputs(folder, tmp_path):
    with pytest.raises(FacelabError, match="does not exist"):
        convert(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(FacelabError, match="not a training set"):
        convert(folder / "alice" / "img0.jpg", tmp_path / "o")
    with pytest.raises(FacelabError, match="unknown output format 'zip'"):
        convert(folder, tmp_path / "o", "zip")
    with pytest.raises(FacelabError, match="inside the source folder"):
        convert(folder, folder / "out.rec")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FacelabError, match="full: already exists and is not empty"):
        convert(folder, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    lst = tmp_path / "bad" / "list.txt"
    lst.parent.mkdir()
    for text, msg in [("a.jpg\n", "line 1: expected"), ("ok.jpg 0\n/etc/passwd 1\n", "line 2: path"),
                      ("", "empty"), ("missing.jpg 0\n", "line 1: cannot read")]:
        lst.write_text(text)
        with pytest.raises(FacelabError, match=msg):
            convert(lst, tmp_path / "o.rec")
    write_recordio(tmp_path / "junk", [(0, b"not an image")], 1, 8)
    with pytest.raises(FacelabError, match="image 0: unknown image encoding"):
        convert(tmp_path / "junk", tmp_path / "o2")
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2*"))  # temporary folder removed
