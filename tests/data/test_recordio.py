import logging
import os
import pickle
import stat
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facelab.data.recordio import (
    MAGIC,
    DamagedRecord,
    RecordFile,
    RecordIODataset,
    pack_image,
    pack_record,
    read_record,
    unpack_image,
    write_recordio,
)
from facelab.errors import FacelabError
from facelab.io import encode_image

MAGIC_LE = struct.pack("<I", MAGIC)


def _images(n, seed=0, hw=(8, 6)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def _write_plain(path, payloads):
    """A .rec of whole records (no insightface header) and its .idx, framed by hand."""
    blob, idx = b"", ""
    for k, p in enumerate(payloads):
        idx += f"{k}\t{len(blob)}\n"
        blob += struct.pack("<II", MAGIC, len(p)) + p + b"\0" * (-len(p) % 4)
    path.write_bytes(blob)
    path.with_suffix(".idx").write_text(idx)
    return [int(line.split("\t")[1]) for line in idx.splitlines()]


@pytest.fixture
def rec_dir(tmp_path):
    labels = [2, 0, 1, 0, 2]
    images = _images(len(labels))
    samples = [(lab, encode_image(im, ".png")) for lab, im in zip(labels, images, strict=True)]
    write_recordio(tmp_path, samples, 4, (8, 6))
    order = np.argsort(labels, kind="stable")
    return tmp_path, [images[i] for i in order], sorted(labels)


def _idx_offsets(path):
    return [int(line.split("\t")[1]) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- byte layout


def test_one_record_matches_hand_packed_bytes():
    payload = pack_image(3, b"abcde", id=7)
    body = struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"abcde"  # 29 bytes -> 3 bytes of padding
    assert pack_record(payload) == struct.pack("<II", MAGIC, 29) + body + b"\0\0\0"
    got, nxt = read_record(pack_record(payload), 0, "mem")
    assert got == body and nxt == 40
    head, image = unpack_image(got, "mem")
    assert (head.flag, head.label.tolist(), head.id, head.id2, image) == (0, [3.0], 7, 0, b"abcde")


def test_multi_label_header():
    payload = pack_image([5, 1.5, 2], b"xy", id=1)
    assert payload == struct.pack("<IfQQ3f", 3, 0.0, 1, 0, 5.0, 1.5, 2.0) + b"xy"
    head, image = unpack_image(payload, "mem")
    assert head.flag == 3 and head.label.tolist() == [5.0, 1.5, 2.0] and image == b"xy"


def test_insightface_file_layout_by_hand(rec_dir):
    root, _, labels = rec_dir
    data = (root / "train.rec").read_bytes()
    offsets = _idx_offsets(root / "train.idx")
    n, c = len(labels), 4
    a, b = n + 1, n + 1 + c
    assert len(offsets) == b and offsets[0] == 0
    assert data[:40] == struct.pack("<II", MAGIC, 32) + struct.pack("<IfQQ2f", 2, 0.0, 0, 0, a, b)
    for ident in range(c):  # identity records: labels (start, end) over image keys
        off = offsets[a + ident]
        flag, _, key, _, s, e = struct.unpack_from("<IfQQ2f", data, off + 8)
        want = [k for k in range(1, a) if labels[k - 1] == ident]
        assert (flag, key) == (2, a + ident)
        assert list(range(int(s), int(e))) == want
    for k in range(1, a):  # image records: flag 0, float label, id = key
        flag, label, key, _ = struct.unpack_from("<IfQQ", data, offsets[k] + 8)
        assert (flag, label, key) == (0, labels[k - 1], k)
    assert (root / "property").read_text().strip() == "4,8,6"


def test_payload_with_magic_is_split_like_mxnet():
    # magic at aligned offsets 4 and 12 (escaped), and at 17 (not aligned: kept)
    payload = b"head" + MAGIC_LE + b"mid." + MAGIC_LE + b"x" + MAGIC_LE + b"tail"
    want = (struct.pack("<II", MAGIC, (1 << 29) | 4) + b"head"
            + struct.pack("<II", MAGIC, (2 << 29) | 4) + b"mid."
            + struct.pack("<II", MAGIC, (3 << 29) | 9) + b"x" + MAGIC_LE + b"tail" + b"\0\0\0")
    assert pack_record(payload) == want
    assert read_record(want + pack_record(b"next"), 0, "mem") == (payload, len(want))
    assert pack_record(MAGIC_LE) == (struct.pack("<II", MAGIC, 1 << 29)
                                     + struct.pack("<II", MAGIC, 3 << 29))
    assert read_record(pack_record(MAGIC_LE), 0, "mem")[0] == MAGIC_LE


def test_split_image_bytes_round_trip(tmp_path):
    blobs = [b"\x01\x02\x03\x04" + MAGIC_LE * 3 + b"z", MAGIC_LE + b"q"]
    write_recordio(tmp_path, [(0, blobs[0]), (1, blobs[1])], 2, 8)
    # extra chunk heads were written
    assert (tmp_path / "train.rec").read_bytes().count(MAGIC_LE) > 2 + 2 + 3
    for path in (tmp_path, tmp_path / "train.rec"):
        ds = RecordIODataset(path)
        assert [ds.raw(i) for i in range(2)] == [(blobs[0], 0), (blobs[1], 1)]
    (tmp_path / "train.idx").unlink()
    assert RecordIODataset(tmp_path).raw(0) == (blobs[0], 0)


# ---------------------------------------------------------------- dataset


def test_dataset_round_trip_with_and_without_idx(rec_dir):
    root, images, labels = rec_dir
    with_idx = RecordIODataset(root)
    (root / "train.idx").unlink()
    scanned = RecordIODataset(root / "train.rec")
    for ds in (with_idx, scanned):
        assert len(ds) == 5 and ds.num_classes == 4 and ds.labels.tolist() == labels
        for i, image in enumerate(images):
            got, label = ds[i]
            assert label == labels[i] and got.dtype == np.uint8 and np.array_equal(got, image)
    tensor, label = with_idx[(3, True)]
    assert tensor.dtype == torch.uint8 and label == labels[3]
    assert np.array_equal(tensor.numpy(), images[3][:, ::-1].transpose(2, 0, 1))
    assert np.array_equal(with_idx[(3, False)][0].numpy(), images[3].transpose(2, 0, 1))
    with pytest.raises(IndexError):
        with_idx[5]


def test_plain_records_with_multi_labels(tmp_path):
    images = _images(3)
    payloads = [pack_image([lab, 9.0], encode_image(im, ".png"), id=k)
                for k, (lab, im) in enumerate(zip([1, 0, 1], images, strict=True))]
    _write_plain(tmp_path / "data.rec", payloads)
    ds = RecordIODataset(tmp_path / "data.rec")  # (1, 9) cannot be a header range: 3 records only
    assert len(ds) == 3 and ds.labels.tolist() == [1, 0, 1]
    assert ds.num_classes == 2 and ds.size is None
    assert np.array_equal(ds[2][0], images[2])


def test_truncated_file(tmp_path, caplog):
    payloads = [pack_image(k, bytes([k]) * 30) for k in range(4)]
    rec = tmp_path / "data.rec"
    offsets = _write_plain(rec, payloads)
    rec.write_bytes(rec.read_bytes()[:-10])
    truncated = rf"data.rec: truncated record at byte offset {offsets[3]}\b"
    with pytest.raises(FacelabError, match=truncated):
        RecordFile(rec, rec.with_suffix(".idx")).read(3)
    with caplog.at_level(logging.WARNING):
        scanned = RecordFile(rec)
    assert f"byte offset {offsets[3]}" in caplog.text
    assert scanned.offsets.tolist() == offsets
    assert [scanned.read(k) for k in range(3)] == payloads[:3]
    with pytest.raises(FacelabError, match=f"byte offset {offsets[3]}"):
        scanned.read(3)
    assert [d.offset for d in scanned.damaged] == [offsets[3]]
    with_idx = RecordIODataset(rec)
    rec.with_suffix(".idx").unlink()
    # the damaged record is left out of a plain file, and listed
    for ds in (with_idx, RecordIODataset(rec)):
        assert len(ds) == 3 and ds.raw(2) == (bytes([2]) * 30, 2)
        assert len(ds.damaged) == 1 and ds.damaged[0].offset == offsets[3]
        assert "truncated record" in ds.damaged[0].reason


@pytest.mark.parametrize("idx", [True, False])
def test_damaged_plain_record_is_listed(tmp_path, idx, caplog):
    images = _images(4)
    payloads = [pack_image(k % 2, encode_image(im, ".png")) for k, im in enumerate(images)]
    rec = tmp_path / "data.rec"
    offsets = _write_plain(rec, payloads)
    data = bytearray(rec.read_bytes())
    data[offsets[1] : offsets[1] + 4] = b"\0\0\0\0"  # record 1 loses its magic
    rec.write_bytes(bytes(data))
    if not idx:
        rec.with_suffix(".idx").unlink()
    with caplog.at_level(logging.WARNING):
        ds = RecordIODataset(rec)
    # one warning, although scan and index meet it
    assert caplog.text.count(f"byte offset {offsets[1]}") == 1
    assert len(ds) == 3 and ds.labels.tolist() == [0, 0, 1]
    assert [np.array_equal(ds[i][0], images[k]) for i, k in enumerate((0, 2, 3))] == [True] * 3
    assert [d.offset for d in ds.damaged] == [offsets[1]] and "no magic" in ds.damaged[0].reason
    assert [i for i, _, _ in ds.readable()] == [0, 1, 2] and len(ds.damaged) == 1


@pytest.mark.parametrize("damage", ["magic", "flag", "length"])
def test_corrupt_record_in_the_middle(rec_dir, damage, caplog):
    root, images, labels = rec_dir
    rec = root / "train.rec"
    off = _idx_offsets(root / "train.idx")[3]  # image 2
    data = bytearray(rec.read_bytes())
    patch = {"magic": b"\0\0\0\0", "flag": struct.pack("<I", (2 << 29) | 40),
             "length": struct.pack("<I", 1 << 28)}
    start = off if damage == "magic" else off + 4
    data[start : start + 4] = patch[damage]
    rec.write_bytes(bytes(data))
    with_idx = RecordIODataset(root)
    (root / "train.idx").unlink()
    with caplog.at_level(logging.WARNING):
        scanned = RecordIODataset(root)
    assert f"byte offset {off}" in caplog.text
    # with an .idx the damage is found on reading
    assert [d.offset for d in scanned.damaged] == [off] and with_idx.damaged == []
    for ds in (with_idx, scanned):
        with pytest.raises(DamagedRecord, match=f"train.rec: .* at byte offset {off}"):
            ds[2]
        for i in (0, 1, 3, 4):
            assert np.array_equal(ds[i][0], images[i]) and ds[i][1] == labels[i]
        # the identity-header layout: the damaged image is left out and listed
        got = list(ds.readable())
        assert [i for i, _, _ in got] == [0, 1, 3, 4]
        assert [lab for _, _, lab in got] == labels[:2] + labels[3:]
        assert [d.offset for d in ds.damaged] == [off]
        assert f"byte offset {off}" in ds.damaged[0].reason


def test_label_disagreeing_with_identity_record(rec_dir):
    root, _, _ = rec_dir
    rec = root / "train.rec"
    off = _idx_offsets(root / "train.idx")[1]
    data = bytearray(rec.read_bytes())
    data[off + 12 : off + 16] = struct.pack("<f", 3.0)  # magic, lrec, flag, then the float label
    rec.write_bytes(bytes(data))
    with pytest.raises(FacelabError, match="record 1 at byte offset .* has label 3"):
        RecordIODataset(root)[0]
    # not damage: readable() does not skip it
    with pytest.raises(FacelabError, match="has label 3"):
        list(RecordIODataset(root).readable())


def test_dataloader_workers_and_pickle(rec_dir):
    root, images, labels = rec_dir
    ds = RecordIODataset(root)
    ds[0]  # map the file in this process first
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[4][0], images[4])
    items = [(i, i % 2 == 1) for i in range(5)]
    loader = DataLoader(ds, batch_size=2, sampler=items, num_workers=2)
    got = torch.cat([x for x, _ in loader])
    want = torch.stack([ds[item][0] for item in items])
    assert torch.equal(got, want) and torch.cat([y for _, y in loader]).tolist() == labels


# ---------------------------------------------------------------- bad input


def test_bad_inputs(tmp_path, rec_dir):
    root, _, _ = rec_dir
    with pytest.raises(FacelabError, match="no RecordIO file"):
        RecordIODataset(tmp_path / "missing")
    (tmp_path / "empty.rec").write_bytes(b"")
    with pytest.raises(FacelabError, match="empty.rec: record file is empty"):
        RecordIODataset(tmp_path / "empty.rec")
    (root / "train.idx").write_text("0\t0\n1 x\n")
    with pytest.raises(FacelabError, match="train.idx: line 2"):
        RecordIODataset(root)
    (root / "train.idx").unlink()
    (root / "property").write_text("4,8\n")
    with pytest.raises(FacelabError, match="property"):
        RecordIODataset(root)
    (root / "property").write_text("2,8,6\n")
    with pytest.raises(FacelabError, match=r"label 2 >= 2 classes"):
        RecordIODataset(root)
    with pytest.raises(FacelabError, match="shorter than its 24-byte header"):
        unpack_image(b"abc", "mem")
    with pytest.raises(FacelabError, match="announces 5 labels"):
        unpack_image(struct.pack("<IfQQ", 5, 0, 0, 0), "mem")
    out = tmp_path / "out"
    for samples, msg in [([(4, b"x")], "label 4"), ([(-1, b"x")], "label -1"),
                         ([(0, "str")], "bytes"), ([(0, b"")], "bytes"), ([], "no images")]:
        with pytest.raises(FacelabError, match=msg):
            write_recordio(out, samples, 4, 8)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written, no temporaries left


@pytest.mark.parametrize("cut", ["inside a record", "at a record boundary"])
def test_truncated_insightface_file_without_idx_says_truncated(rec_dir, cut):
    """Read as a plain file, the header record (labels a=6, b=10) would be an image of label 6
    ('label 6 >= 4 classes'); it is a file that lost its end, and the error says where it ends."""
    root, _, _ = rec_dir
    rec = root / "train.rec"
    offsets = _idx_offsets(root / "train.idx")  # 1 header + 5 images + 4 identities
    data = rec.read_bytes()
    end = offsets[7] + 5 if cut == "inside a record" else offsets[7]
    rec.write_bytes(data[:end])
    (root / "train.idx").unlink()
    if cut == "inside a record":  # the scan keeps the cut record as a placeholder
        held, where = 8, f"cut off in the record at byte offset {offsets[7]}"
    else:
        held, where = 7, f"ending at byte offset {end}"
    match = (rf"train.rec: truncated: its header record announces 10 records \(5 images, "
             rf"4 identities\) but the file holds {held}, {where}")
    with pytest.raises(FacelabError, match=match):
        RecordIODataset(root)


def test_written_files_follow_the_umask(tmp_path):
    """mkstemp makes files 0600; renamed into place they must be as any new file: 0666 & ~umask."""
    old = os.umask(0o027)
    try:
        write_recordio(tmp_path / "a", [(0, b"x" * 10), (1, b"y" * 10)], 2, 8)
        os.umask(0o002)
        write_recordio(tmp_path / "b", [(0, b"x" * 10), (1, b"y" * 10)], 2, 8)
    finally:
        os.umask(old)
    for folder, mode in (("a", 0o640), ("b", 0o664)):
        for name in ("train.rec", "train.idx", "property"):
            assert stat.S_IMODE((tmp_path / folder / name).stat().st_mode) == mode, (folder, name)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["property", "train.idx",
                                                                  "train.rec"]  # no scratch left


def test_an_index_shorter_than_the_header_says_so(rec_dir):
    root, _, _ = rec_dir
    lines = (root / "train.idx").read_text().splitlines(keepends=True)
    (root / "train.idx").write_text("".join(lines[:6]))  # header, 5 images; no identity left
    with pytest.raises(FacelabError, match=r"truncated: .* announces 10 records .* but its index "
                                           rf"{root / 'train.idx'} lists 6"):
        RecordIODataset(root)
