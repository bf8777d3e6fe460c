import csv
import logging
import os
import stat
import struct

import cv2
import numpy as np
import pytest
import torch

from facelab.cli import main
from facelab.data.convert import convert
from facelab.data.folder import ImageFolderDataset
from facelab.data.formats import FORMATS, detect_format
from facelab.data.recordio import MAGIC, RecordIODataset, pack_image, write_recordio
from facelab.errors import FacelabError
from facelab.io import encode_image


def _tree_bytes(root):
    """{identity index: [file bytes, in file-name order]} of an image folder (names may differ); an
    empty identity folder is no identity."""
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and any(p.iterdir()))
    return {i: [f.read_bytes() for f in sorted(d.iterdir())] for i, d in enumerate(dirs)}


@pytest.fixture
def folder(tmp_path):
    """Four identity folders of mixed JPEG/PNG images; carol holds none (so she is no class)."""
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
    assert counts == {"src_format": "folder", "dst_format": "rec", "images": 6,
                      "classes": 3,  # carol holds no image: no class
                      "height": 10, "width": 8, "skipped": 0, "damaged": [], "undecodable": []}
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["property", "train.idx",
                                                                     "train.rec"]
    assert (tmp_path / "rec" / "property").read_text().strip() == "3,10,8"
    back = tmp_path / "back"
    assert convert(tmp_path / "rec", back)["dst_format"] == "folder"
    assert _tree_bytes(back) == _tree_bytes(folder)
    assert sorted(p.name for p in back.iterdir()) == ["0", "1", "2", "property"]  # no skipped.csv
    assert sorted(p.name for p in (back / "0").iterdir()) == ["00000000.jpg", "00000001.png",
                                                              "00000002.jpg"]


def test_rec_is_a_drop_in_for_the_folder(folder, tmp_path):
    convert(folder, tmp_path / "x.rec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "property", "x.idx", "x.rec"]
    rec, ref = RecordIODataset(tmp_path / "x.rec"), ImageFolderDataset(folder)
    assert rec.num_classes == ref.num_classes == 3 and np.array_equal(rec.labels, ref.labels)
    for i in range(len(ref)):
        for flip in (False, True):
            a, b = rec[(i, flip)], ref[(i, flip)]
            assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_rec_list_rec_is_identical(folder, tmp_path):
    convert(folder, tmp_path / "a", "rec")
    counts = convert(tmp_path / "a" / "train.rec", tmp_path / "l" / "list.txt")
    assert counts["dst_format"] == "list" and counts["images"] == 6
    lines = (tmp_path / "l" / "list.txt").read_text().splitlines()
    assert lines[0] == "0/00000000.jpg 0" and lines[-1] == "2/00000005.jpg 2"
    assert detect_format(tmp_path / "l") == "list"
    convert(tmp_path / "l", tmp_path / "b", "recordio")
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _damaged_plain_rec(path):
    """4 plain image records (labels 0 1 0 1, no identity header, no .idx); record 1 loses its
    magic. Returns (path, byte offset of record 1, encoded images)."""
    blobs = [encode_image(np.full((4, 6, 3), 40 * k, np.uint8), ".png") for k in range(4)]
    blob, offsets = b"", []
    for k, image in enumerate(blobs):
        payload = pack_image(k % 2, image, id=k)
        offsets.append(len(blob))
        head = struct.pack("<II", MAGIC if k != 1 else 0, len(payload))
        blob += head + payload + b"\0" * (-len(payload) % 4)
    path.write_bytes(blob)
    return path, offsets[1], blobs


def test_damaged_plain_record_is_counted(tmp_path, caplog):
    rec, off, blobs = _damaged_plain_rec(tmp_path / "plain.rec")
    counts = convert(rec, tmp_path / "out")
    assert (counts["images"], counts["classes"], counts["skipped"]) == (3, 2, 1)
    assert [d.offset for d in counts["damaged"]] == [off]
    assert "no magic" in counts["damaged"][0].reason
    assert _tree_bytes(tmp_path / "out") == {0: [blobs[0], blobs[2]], 1: [blobs[3]]}
    rows = list(csv.reader((tmp_path / "out" / "skipped.csv").open()))
    assert rows[0] == ["source", "offset", "reason"] and len(rows) == 2
    assert rows[1][:2] == [str(rec), str(off)]
    assert "plain.rec: corrupt record at byte offset" in rows[1][2]
    # the CLI: one warning line, count and offset
    with caplog.at_level(logging.WARNING, logger="facelab"):
        assert main(["convert", str(rec), str(tmp_path / "o.rec")]) == 0
    warning = [r.getMessage() for r in caplog.records
               if r.name == "facelab" and r.levelno == logging.WARNING]
    assert len(warning) == 1 and "1 skipped (1 damaged records, 0 images" in warning[0]
    assert f"the record at byte offset {off}: " in warning[0]
    assert str(tmp_path / "skipped.csv") in warning[0] and (tmp_path / "skipped.csv").is_file()
    assert len(RecordIODataset(tmp_path / "o.rec")) == 3


def test_damaged_record_with_identity_header_is_counted(folder, tmp_path):
    convert(folder, tmp_path / "a", "rec")
    rec = tmp_path / "a" / "train.rec"
    # image 1 (alice)
    off = int((tmp_path / "a" / "train.idx").read_text().splitlines()[2].split("\t")[1])
    data = bytearray(rec.read_bytes())
    # its length then runs past the end of the file
    data[off + 4 : off + 8] = struct.pack("<I", 1 << 28)
    rec.write_bytes(bytes(data))
    for name, drop_idx in (("b", False), ("c", True)):
        if drop_idx:
            (tmp_path / "a" / "train.idx").unlink()
        counts = convert(tmp_path / "a", tmp_path / name, "list")
        damaged = [d.offset for d in counts["damaged"]]
        assert (counts["images"], counts["skipped"], damaged) == (5, 1, [off])
        text = (tmp_path / name / "skipped.csv").read_text()
        assert text.startswith(f"source,offset,reason\n{rec},{off},")
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
    (root / "list.txt").write_text("imgs/my face 0.png 2\n\nimgs/my face 1.png 0\n"
                                   "imgs/my face 2.png 2\n")
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
    for text, msg in [("a.jpg\n", "line 1: expected"),
                      ("ok.jpg 0\n/etc/passwd 1\n", "line 2: path"),
                      ("", "empty"), ("missing.jpg 0\n", "line 1: cannot read")]:
        lst.write_text(text)
        with pytest.raises(FacelabError, match=msg):
            convert(lst, tmp_path / "o.rec")
    write_recordio(tmp_path / "junk", [(0, b"not an image")], 1, 8)
    match = "junk: no images to convert .1 left out.*train.rec: cannot decode"
    with pytest.raises(FacelabError, match=match):
        convert(tmp_path / "junk", tmp_path / "o2")
    # temporary folder removed
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2*"))


def _jpeg(seed, hw=(24, 20)):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), hw[::-1])
    image = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _bad_folder(root):
    """2 identities x 4 JPEGs; three are bad: empty, truncated, with zeroed scan data."""
    files = {}
    for c in range(2):
        (root / f"id{c}").mkdir(parents=True)
        for k in range(4):
            files[root / f"id{c}" / f"{k}.jpg"] = _jpeg(10 * c + k)
    good = dict(files)
    j = files[root / "id1" / "2.jpg"]
    at = j.find(b"\xff\xda") + (len(j) - j.find(b"\xff\xda")) * 3 // 10
    files[root / "id0" / "1.jpg"] = b""
    files[root / "id0" / "3.jpg"] = files[root / "id0" / "3.jpg"][:-40]
    files[root / "id1" / "2.jpg"] = j[:at] + b"\0" * 32 + j[at + 32 :]
    for path, data in files.items():
        path.write_bytes(data)
    return {p: d for p, d in good.items() if files[p] == d}


@pytest.mark.parametrize("to", ["folder", "rec", "list", "named-rec"])
def test_undecodable_images_are_left_out_and_listed(tmp_path, to, caplog):
    good = _bad_folder(tmp_path / "src")
    dst = tmp_path / ("out.rec" if to == "named-rec" else "out")
    with caplog.at_level(logging.WARNING, logger="facelab"):
        argv = ["convert", str(tmp_path / "src"), str(dst), "--to", to.replace("named-", "")]
        assert main(argv) == 0
    folder = tmp_path if to == "named-rec" else dst
    rows = list(csv.reader((folder / "skipped.csv").open()))
    src = tmp_path / "src"
    bad = [src / "id0" / "1.jpg", src / "id0" / "3.jpg", src / "id1" / "2.jpg"]
    assert rows[0] == ["source", "offset", "reason"]
    assert [r[:2] for r in rows[1:]] == [[str(p), ""] for p in bad]
    assert [r[2].split(":")[0] for r in rows[1:]] == ["empty file (0 bytes), not an image",
                                                      "damaged JPEG data", "damaged JPEG data"]
    warning = [r.getMessage() for r in caplog.records
               if r.name == "facelab" and r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "3 skipped (0 damaged records, 3 images that do not decode cleanly)" in warning[0]
    assert f"the first: {src / 'id0' / '1.jpg'}: empty file" in warning[0]
    if to in ("rec", "named-rec"):
        ds = RecordIODataset(dst)
        written = sorted((ds.raw(i)[0], ds.raw(i)[1]) for i in range(len(ds)))
    else:
        written = sorted((p.read_bytes(), int(p.parent.name[2:])) for p in dst.glob("id*/*.jpg"))
    assert written == sorted((d, int(p.parent.name[2:])) for p, d in good.items())


def test_output_is_checked_writable_before_any_work(tmp_path, monkeypatch):
    _bad_folder(tmp_path / "src")
    (tmp_path / "afile").write_text("a file, not a folder")
    unread = FORMATS["folder"]._replace(read=lambda *a: pytest.fail("read the source"))
    monkeypatch.setitem(FORMATS, "folder", unread)
    for dst in (tmp_path / "afile" / "out", tmp_path / "afile" / "out.rec"):
        with pytest.raises(FacelabError, match=r"afile: output folder is not writable"):
            convert(tmp_path / "src", dst, "rec")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "afile" / "o")]) == 2


def test_output_follows_the_umask(tmp_path):
    _bad_folder(tmp_path / "src")
    old = os.umask(0o027)
    try:
        convert(tmp_path / "src", tmp_path / "f")
        convert(tmp_path / "src", tmp_path / "r", "rec")
    finally:
        os.umask(old)
    made = [tmp_path / "f", *(tmp_path / "f").rglob("*"), tmp_path / "r"]
    for path in made + list((tmp_path / "r").iterdir()):
        want = 0o750 if path.is_dir() else 0o640
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_a_format_a_folder_cannot_name_is_one_clear_error(tmp_path):
    tiff = cv2.imencode(".tiff", np.full((8, 8, 3), 9, np.uint8))[1].tobytes()
    write_recordio(tmp_path / "t", [(0, tiff), (1, tiff)], 2, 8)
    with pytest.raises(FacelabError, match=r"train.rec \(byte offset \d+\): unknown image encod"):
        convert(tmp_path / "t", tmp_path / "o")
    assert convert(tmp_path / "t", tmp_path / "o.rec")["images"] == 2  # no file name needed
