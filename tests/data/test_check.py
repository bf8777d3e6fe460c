"""Strict image checks (facelab.data.check) and the training-set checks of open_training_set."""

import logging
import os
import struct

import cv2
import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.data import check as check_mod
from facelab.data import open_training_set
from facelab.data.check import check_dataset, check_workers, screen_stream
from facelab.data.folder import ImageFolderDataset
from facelab.data.multi import open_training_data
from facelab.data.recordio import MAGIC, pack_image, write_recordio
from facelab.errors import FacelabError
from facelab.images import decode_strict, image_problem
from facelab.io import decode_image


def _face(seed: int, hw=(112, 112)) -> np.ndarray:
    """A smooth colour field plus noise: JPEG data with real entropy-coded content."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(0, 255, (6, 6, 3)), hw[::-1])
    return np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)


def _jpeg(image, quality=90, params=()) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality, *params])[1].tobytes()


def _zeroed(jpeg: bytes, n=64) -> bytes:
    """n bytes of the entropy-coded data set to zero, 30 % into the scan. (Deeper in, libjpeg's
    Huffman decoding may resynchronise and end the scan where it should: such damage has no symptom
    any decoder could report, JPEG having no checksum; at 30 % every image of these tests shows
    one.)"""
    sos = jpeg.find(b"\xff\xda")
    at = sos + (len(jpeg) - sos) * 3 // 10
    return jpeg[:at] + b"\0" * n + jpeg[at + n :]


def _png_crc_damaged(png: bytes) -> bytes:
    data = bytearray(png)
    idat = png.find(b"IDAT")
    data[idat + 30] ^= 0x01  # one bit of compressed data: the chunk CRC then fails
    return bytes(data)


def test_bad_bytes_get_a_reason_that_the_loader_decoder_may_miss():
    jpeg, png = _jpeg(_face(0)), cv2.imencode(".png", _face(1))[1].tobytes()
    assert image_problem(jpeg) is None and image_problem(png) is None
    zeroed = _zeroed(jpeg)
    assert decode_image(zeroed, "z").shape == (112, 112, 3)  # OpenCV takes it without a word
    cases = {
        b"": "empty file (0 bytes)",
        b"hello, not an image" * 3: "cannot decode image data",
        zeroed: "damaged JPEG data: Corrupt JPEG data",
        jpeg[: len(jpeg) * 2 // 3]: "damaged JPEG data: Premature end of JPEG file",
        jpeg[:-2]: "damaged JPEG data: Premature end of JPEG file",  # no end-of-image marker
        jpeg[:200]: "damaged JPEG data",  # cut inside the header
        _png_crc_damaged(png): "damaged PNG data",
        png[: len(png) // 2]: "PNG",
    }
    for data, reason in cases.items():
        got = image_problem(data)
        assert got is not None and reason in got, (len(data), got)
        with pytest.raises(FacelabError, match=r"^where\.jpg: "):
            decode_strict(data, "where.jpg")


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment holding one tag: Orientation (0x0112)."""
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_strict_pixels_are_the_loader_pixels():
    """What the check decodes is what the loader (OpenCV) would: preload may keep it."""
    image, sampling = _face(2, (96, 80)), cv2.IMWRITE_JPEG_SAMPLING_FACTOR
    variants = {
        "420": _jpeg(image),
        "444": _jpeg(image, 95, [sampling, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
        "422": _jpeg(image, 80, [sampling, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]),
        "progressive": _jpeg(image, 85, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "gray": cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))[1].tobytes(),
        "exif-rotated": _with_exif_orientation(_jpeg(image), 6),
        "png": cv2.imencode(".png", image)[1].tobytes(),
        "bmp": cv2.imencode(".bmp", image)[1].tobytes(),
    }
    for name, data in variants.items():
        expected = decode_image(data, name)
        got = decode_strict(data, name)
        assert got.dtype == np.uint8 and np.array_equal(got, expected), name
    assert decode_image(variants["exif-rotated"], "r").shape == (80, 96, 3)  # turned, like OpenCV


def _folder(root, counts, bad=None, hw=(112, 112)):
    """Identity folders of JPEGs; bad = {(identity, k): bytes} replaces some files."""
    bad = bad or {}
    for c, n in enumerate(counts):
        (root / f"id{c}").mkdir(parents=True, exist_ok=True)
        for k in range(n):
            data = bad.get((c, k), _jpeg(_face(100 * c + k, hw)))
            (root / f"id{c}" / f"{k}.jpg").write_bytes(data)
    return root


def test_parallel_check_equals_the_serial_one(tmp_path):
    jpeg = _jpeg(_face(5))
    bad = {(0, 1): b"", (1, 3): _zeroed(jpeg), (2, 4): jpeg[:900]}
    root = _folder(tmp_path / "t", [5, 5, 5], bad)
    ds = ImageFolderDataset(root)
    serial = check_dataset(ds, workers=1)
    pooled = check_dataset(ds, workers=2, min_parallel=0)
    assert serial.results == pooled.results and serial.images is None
    assert [i for i, r in serial.results if isinstance(r, str)] == [1, 8, 14]
    for workers in (1, 2):  # the pixels kept: written by the pool's processes into shared memory
        kept = check_dataset(ds, keep=True, workers=workers, min_parallel=0)
        assert kept.results == serial.results and kept.size == (112, 112)
        for i, r in kept.results:
            want = np.zeros((112, 112, 3), np.uint8) if isinstance(r, str) else decode_image(
                ds.encoded(i), "x")
            assert np.array_equal(kept.images[i], want), (workers, i)


@pytest.mark.parametrize("workers", [1, 2])
def test_screen_stream_keeps_order_and_reasons(workers):
    good = [_jpeg(_face(k, (16, 16))) for k in range(150)]
    items = [(k, b"" if k % 37 == 5 else good[k]) for k in range(150)]
    out = list(screen_stream(iter(items), lambda it: it[1], workers=workers, batch=8))
    assert [it for it, _ in out] == items
    assert [it[0] for it, reason in out if reason] == [5, 42, 79, 116]


def test_bad_images_refuse_training_with_their_names(tmp_path):
    jpeg = _jpeg(_face(7))
    bad = {(0, 0): b"", (1, 2): _zeroed(jpeg), (2, 1): jpeg[:1500],
           (2, 3): _jpeg(_face(9, (100, 100)))}
    root = _folder(tmp_path / "train", [3, 4, 5], bad)
    with pytest.raises(FacelabError) as err:
        open_training_set(root)
    msg = str(err.value)
    assert msg.startswith(f"{root}: 4 bad images (") and "and 1 more" in msg
    assert "set data.skip_bad: true to train without them" in msg
    assert f"{root / 'id0' / '0.jpg'}: empty file (0 bytes)" in msg
    assert f"{root / 'id1' / '2.jpg'}: damaged JPEG data: Corrupt JPEG data" in msg
    assert f"{root / 'id2' / '1.jpg'}: damaged JPEG data: Premature end" in msg
    assert "size 100x100 differs from the set's 112x112" not in msg  # the 4th: not shown, counted
    assert open_training_set(root, check_images=False).bad_images == []  # unchecked: opens


@pytest.mark.parametrize("preload", [False, True])
def test_skip_bad_leaves_them_out_with_labels_unchanged(tmp_path, preload):
    jpeg = _jpeg(_face(7))
    bad = {(0, 0): b"", (1, 2): _zeroed(jpeg), (2, 3): _jpeg(_face(9, (100, 100)))}
    root = _folder(tmp_path / "train", [3, 4, 5], bad)
    ds = open_training_set(root, preload=preload, skip_bad=True)
    names = {p: c for c in range(3) for p in (root / f"id{c}").iterdir()}  # truth: folder -> label
    left_out = [root / "id0" / "0.jpg", root / "id1" / "2.jpg", root / "id2" / "3.jpg"]
    assert len(ds) == 9 and ds.num_classes == 3
    assert {p for p, _ in ds.samples} == set(names) - set(left_out)
    for i, (path, label) in enumerate(ds.samples):
        image, got = ds[(i, False)]
        assert got == label == names[path] == int(ds.labels[i])
        pixels = decode_image(path.read_bytes(), "x").transpose(2, 0, 1)
        assert torch.equal(image, torch.from_numpy(pixels))
    assert [name for name, _ in ds.bad_images] == [str(p) for p in left_out]
    reasons = [reason for _, reason in ds.bad_images]
    assert reasons[0] == "empty file (0 bytes), not an image"
    assert reasons[1].startswith("damaged JPEG data: Corrupt JPEG data")
    assert reasons[2] == "size 100x100 differs from the set's 112x112"


def test_preload_decodes_each_image_once(tmp_path, monkeypatch):
    root = _folder(tmp_path / "train", [3, 3])
    calls = []
    real = check_mod.decode_clean
    monkeypatch.setattr(check_mod, "decode_clean", lambda data: calls.append(1) or real(data))
    monkeypatch.setattr(ImageFolderDataset, "_read", lambda *a: pytest.fail("decoded twice"))
    ds = open_training_set(root, preload=True)
    assert len(calls) == 6 and ds._cache is not None and ds._cache.shape == (6, 112, 112, 3)


def test_identities_empty_folders_and_fewer_than_two(tmp_path, caplog):
    root = _folder(tmp_path / "train", [2, 2])
    for name in ("zz_empty", "aa_empty", "mm_empty"):
        (root / name).mkdir()
    with caplog.at_level(logging.WARNING):
        ds = open_training_set(root)
    assert ds.classes == ["id0", "id1"] and ds.num_classes == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{root}: 3 identity folders without images, not counted as classes: "
                        "aa_empty, mm_empty, zz_empty"]
    one = _folder(tmp_path / "one", [3])
    match = rf"^{one}: the training set has 1 identity with images; .* at least 2"
    with pytest.raises(FacelabError, match=match):
        open_training_set(one)
    half = _folder(tmp_path / "half", [2, 1], {(1, 0): b""})  # skip_bad would leave one identity
    with pytest.raises(FacelabError, match=rf"^{half}: the training set has 1 identity"):
        open_training_set(half, skip_bad=True)


def _rec_with_bad_image(tmp_path):
    images = [_jpeg(_face(k, (32, 32))) for k in range(6)]
    images[3] = _zeroed(images[3], 32)
    write_recordio(tmp_path / "rec", [(k % 2, data) for k, data in enumerate(images)], 2, 32)
    return tmp_path / "rec", images


def test_recordio_bad_image_is_named_by_record_and_offset(tmp_path):
    root, images = _rec_with_bad_image(tmp_path)
    offsets = [int(line.split("\t")[1]) for line in (root / "train.idx").read_text().splitlines()]
    # sorted by label (stable): keys 1..3 hold label 0 (images 0, 2, 4), keys 4..6 label 1 (1, 3, 5)
    match = rf"1 bad image \(.*train.rec record 5 at byte offset {offsets[5]}: damaged JPEG data: "
    with pytest.raises(FacelabError, match=match + "Corrupt JPEG data"):
        open_training_set(root)
    ds = open_training_set(root, skip_bad=True)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 0, 1, 1] and ds.num_classes == 2
    assert [ds.raw(i)[0] for i in range(5)] == [images[k] for k in (0, 2, 4, 1, 5)]
    assert ds.bad_images[0][0] == f"{root / 'train.rec'} record 5 at byte offset {offsets[5]}"


def test_damaged_plain_record_is_a_bad_image(tmp_path):
    images = [_jpeg(_face(k, (16, 16))) for k in range(4)]
    blob, offsets = b"", []
    for k, image in enumerate(images):
        payload = pack_image(k % 2, image, id=k)
        offsets.append(len(blob))
        magic = MAGIC if k != 2 else 0
        blob += struct.pack("<II", magic, len(payload)) + payload + b"\0" * (-len(payload) % 4)
    (tmp_path / "plain.rec").write_bytes(blob)
    match = rf"1 bad image \(.*plain.rec at byte offset {offsets[2]}: .*no magic"
    with pytest.raises(FacelabError, match=match):
        open_training_set(tmp_path / "plain.rec")
    ds = open_training_set(tmp_path / "plain.rec", skip_bad=True)
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 1] and len(ds.bad_images) == 1


def test_file_list_sets_train_and_are_checked(tmp_path):
    root = tmp_path / "lst"
    (root / "imgs").mkdir(parents=True)
    for k in range(4):
        data = b"" if k == 2 else _jpeg(_face(k, (16, 16)))
        (root / "imgs" / f"{k}.jpg").write_bytes(data)
    (root / "list.txt").write_text("imgs/0.jpg 1\nimgs/1.jpg 0\nimgs/2.jpg 1\nimgs/3.jpg 2\n")
    with pytest.raises(FacelabError, match=r"1 bad image \(.*imgs/2.jpg: empty file"):
        open_training_set(root)
    ds = open_training_set(root / "list.txt", skip_bad=True)
    assert ds.num_classes == 3 and ds.labels.tolist() == [1, 0, 2] and len(ds) == 3
    assert np.array_equal(ds[(2, False)][0].permute(1, 2, 0).numpy(),
                          decode_image((root / "imgs" / "3.jpg").read_bytes(), "x"))


def test_every_dataset_of_a_multi_set_is_checked(tmp_path):
    a = _folder(tmp_path / "A", [2, 2])
    b = _folder(tmp_path / "B", [2, 3], {(1, 1): b"\xff\xd8broken"})
    data = {"datasets": [{"path": str(a)}, {"path": str(b)}]}
    with pytest.raises(FacelabError, match=rf"^{b}: 1 bad image"):
        open_training_data(config_from_dict({"data": data}).data)
    union = open_training_data(config_from_dict({"data": {**data, "skip_bad": True}}).data)
    assert len(union) == 8 and union.num_classes == 4
    assert [name for name, _ in union.bad_images] == [str(b / "id1" / "1.jpg")]
    off = open_training_data(config_from_dict({"data": {**data, "check_images": False}}).data)
    assert len(off) == 9 and off.bad_images == []


def test_zero_byte_image_is_one_clear_error_in_the_loader():
    with pytest.raises(FacelabError, match=r"^x.jpg: empty file \(0 bytes\)"):
        decode_image(b"", "x.jpg")


def test_check_workers_share_the_cores_between_local_ranks(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert check_workers() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more ranks than cores: one each
    assert check_workers() == 1
