"""facelab.Recognizer on real photographs: faces found, aligned and embedded as evaluation does,
decisions that follow the stored threshold, and every way a photo can arrive (or fail to)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tests.references import photos
from tests.references.float_paths import DIST_TOL

from facelab.align import align_face
from facelab.align.detect import detect_faces
from facelab.align.mtcnn import weights_dir
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.model import load_model
from facelab.recognize import Recognizer
from facelab.recognize.photos import load_photo


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    try:
        weights_dir()
    except FacelabError:
        pytest.skip("MTCNN weights not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    pytest.importorskip("skimage")
    stored = {"val-a": {"accuracy": {"threshold": 1.1, "accuracy": 0.9}},
              "val-b": {"accuracy": {"threshold": 0.7, "accuracy": 0.8}}}
    return photos.model_run(tmp_path_factory.mktemp("run"), thresholds=stored)


@pytest.fixture(scope="module")
def rec(run):
    return Recognizer.load(run, precision="fp32")


def _jpeg(image: np.ndarray, exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation  # EXIF Orientation
    Image.fromarray(image).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_importable_from_the_package():
    from facelab import Recognizer as top

    assert top is Recognizer


def test_a_face_is_found_aligned_and_embedded_as_evaluation_does(rec, run):
    image = photos.astronaut()
    [face] = rec.embed(image)
    # independent path: the detector, the alignment and the evaluation embedding called directly
    [truth] = detect_faces(image)
    np.testing.assert_allclose(face.landmarks, truth.landmarks)
    crop = align_face(image, truth.landmarks)
    assert face.crop.dtype == np.uint8 and face.crop.shape == (112, 112, 3)
    assert np.array_equal(face.crop, crop)
    model, pre = load_model(run)
    [emb] = embed_images(model, crop[None], preprocess=pre)
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (16,)
    np.testing.assert_allclose(face.embedding, emb, atol=DIST_TOL)
    assert abs(np.linalg.norm(face.embedding) - 1) < DIST_TOL


def test_every_face_of_a_collage_main_first(rec):
    image = photos.collage([photos.astronaut(), photos.camera(), photos.hopper()])
    faces = rec.embed(image)
    assert len(faces) == 3
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in faces)
    third = image.shape[1] / 3
    assert [int(c // third) for c in centres] == [0, 1, 2]  # one face in each photo
    assert all(f.embedding is not None and f.crop.shape == (112, 112, 3) for f in faces)


def test_exif_orientation_is_applied(rec):
    upright = photos.astronaut()
    [want] = rec.detect(_jpeg(upright))
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # the pixels a camera held sideways writes
    assert rec.detect(_jpeg(stored)) == []  # without the tag the face lies on its side: not found
    [got] = rec.detect(_jpeg(stored, exif_orientation=6))  # 6: rotate 90° clockwise to display
    eyes = np.linalg.norm(want.landmarks[1] - want.landmarks[0])
    assert np.abs(got.landmarks - want.landmarks).max() < 0.1 * eyes


def test_grayscale_and_rgba_photos(rec, tmp_path):
    [gray] = rec.detect(photos.camera())  # [H, W] uint8
    [gray1] = rec.detect(photos.camera()[:, :, None])  # [H, W, 1]
    np.testing.assert_allclose(gray.landmarks, gray1.landmarks)
    path = tmp_path / "camera.png"
    Image.fromarray(photos.camera()).save(path)  # mode L on disk
    [from_file] = rec.detect(path)
    np.testing.assert_allclose(from_file.landmarks, gray.landmarks)
    rgb = photos.astronaut()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "astronaut.png")  # mode RGBA, opaque
    [want] = rec.detect(rgb)
    for photo in (rgba, tmp_path / "astronaut.png", Image.fromarray(rgba)):
        [face] = rec.detect(photo)
        np.testing.assert_allclose(face.landmarks, want.landmarks)


def test_transparency_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half: between black and white
    out = load_photo(rgba)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 0].tolist() == [round(255 * 127 / 255)] * 3


def test_a_photo_without_a_face(rec, tmp_path):
    blank = np.full((200, 300, 3), 128, np.uint8)
    assert rec.detect(blank) == [] and rec.embed(blank) == []
    path = tmp_path / "wall.jpg"
    path.write_bytes(_jpeg(blank))
    with pytest.raises(FacelabError, match=r"wall\.jpg: no face found"):
        rec.compare(photos.astronaut(), path)
    with pytest.raises(FacelabError, match=r"photo 1: no face found"):
        rec.compare(blank, photos.astronaut())


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"), (b"not an image at all", "cannot decode"),
    ("truncated", "cannot decode"),
])
def test_a_corrupt_file_is_a_clear_error(rec, tmp_path, content, match):
    if content == "truncated":
        content = _jpeg(photos.astronaut())[:5000]
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(FacelabError, match=rf"bad\.jpg: {match}"):
        rec.embed(path)
    with pytest.raises(FacelabError, match="no-such.jpg: cannot read image"):
        rec.embed(tmp_path / "no-such.jpg")


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8),
                                 [[1, 2]], 3.5])
def test_bad_photo_values(bad):
    with pytest.raises(FacelabError, match="photo 1: a photo"):
        load_photo(bad)


def test_embed_many_equals_embed_per_photo(rec):
    images = [photos.astronaut(), photos.collage([photos.camera(), photos.hopper()]),
              np.full((64, 64, 3), 0, np.uint8), photos.hopper()]
    single = [rec.embed(image) for image in images]
    for batch_size in (1, 3, 32):
        many = rec.embed_many(images, batch_size=batch_size)
        assert [len(f) for f in many] == [len(f) for f in single] == [1, 2, 0, 1]
        for got, want in zip(many, single, strict=True):
            for g, w in zip(got, want, strict=True):
                # the same crops through batches of other sizes: float32 rounding apart
                np.testing.assert_allclose(g.embedding, w.embedding, atol=DIST_TOL)
                np.testing.assert_array_equal(g.crop, w.crop)


def test_embed_stream_reports_unreadable_photos_and_goes_on(rec, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    out = list(rec.embed_stream([photos.astronaut(), bad, photos.hopper()], batch_size=1))
    assert [name for name, _ in out] == ["photo 1", str(bad), "photo 3"]
    assert len(out[0][1]) == 1 and len(out[2][1]) == 1
    assert isinstance(out[1][1], FacelabError) and "cannot decode" in str(out[1][1])
    with pytest.raises(FacelabError, match="bad.jpg"):
        rec.embed_many([photos.astronaut(), bad])


def test_compare_follows_the_stored_threshold(run, rec):
    a, b = photos.astronaut(), photos.hopper()
    match = rec.compare(a, b)
    assert match.threshold_set == "val-a" and match.threshold == 1.1  # the first stored set
    ea, eb = rec.embed(a)[0].embedding, rec.embed(b)[0].embedding
    want = float(np.sum((ea.astype(np.float64) - eb) ** 2))
    assert abs(match.distance - want) < 1e-5 and abs(match.score - (1 - want / 2)) < 1e-5
    assert match.same == (match.distance < 1.1)
    # the decision moves with the threshold: just above and just below the measured distance
    for delta, same in ((1e-3, True), (-1e-3, False)):
        chosen = Recognizer.load(run, precision="fp32", threshold=match.distance + delta)
        m = chosen.compare(a, b)
        assert m.same is same and m.threshold_set is None
    b_set = Recognizer.load(run, precision="fp32", threshold_set="val-b")
    assert b_set.threshold == 0.7 and b_set.compare(a, b).threshold_set == "val-b"


def test_threshold_errors(run, tmp_path):
    with pytest.raises(FacelabError, match="no stored threshold for validation set 'nope'"):
        Recognizer.load(run, precision="fp32", threshold_set="nope")
    for bad in (-0.1, 4.5, float("nan")):
        with pytest.raises(FacelabError, match="threshold must be a squared L2 distance"):
            Recognizer.load(run, precision="fp32", threshold=bad)
    bare = Recognizer.load(photos.model_run(tmp_path / "bare"), precision="fp32")
    assert bare.threshold is None
    with pytest.raises(FacelabError, match="stores no verification threshold"):
        bare.compare(photos.astronaut(), photos.hopper())
    with pytest.raises(FacelabError, match="detector 'dlib' is not available"):
        Recognizer.load(run, detector="dlib")
    with pytest.raises(FacelabError, match="no checkpoint found"):
        Recognizer.load(tmp_path / "missing")


def test_an_exported_model_recognises_as_its_checkpoint(run, rec, tmp_path):
    pytest.importorskip("onnxruntime")
    from facelab.export import export_onnx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(run, tmp_path / "m.onnx")
        onnx_rec = Recognizer.load(tmp_path / "m.onnx")
    finally:
        torch.set_num_threads(threads)
    assert onnx_rec.precision == "onnxruntime-fp32"
    assert onnx_rec.fingerprint == rec.fingerprint  # same weights, same fingerprint
    assert onnx_rec.threshold == rec.threshold and onnx_rec.threshold_set == "val-a"
    a, b = photos.astronaut(), photos.hopper()
    # two kernel paths (onnxruntime, torch): distances agree to float32 rounding
    assert abs(onnx_rec.compare(a, b).distance - rec.compare(a, b).distance) < 1e-4
