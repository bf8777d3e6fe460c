import json
import logging

import cv2
import numpy as np
import pytest
import torch
from tests.references import photos

from facelab.align import ARCFACE_112, align_face, mtcnn, similarity_transform
from facelab.align.detect import Face, detect_faces, landmarks_for_folder, main_face
from facelab.align.folder import (
    FACE_HEADER,
    HEADER,
    align_folder,
    read_face_landmarks,
    read_landmarks,
)
from facelab.cli import main
from facelab.errors import FacelabError
from facelab.io import read_image


@pytest.fixture(scope="module")
def weights():
    try:
        return mtcnn.weights_dir()
    except FacelabError:
        pytest.skip("MTCNN weights not installed (pip install --no-deps facenet-pytorch==2.6.0)")


@pytest.fixture(scope="module")
def astronaut(weights):
    pytest.importorskip("skimage.data")
    image = photos.astronaut()  # [512, 512, 3] RGB, one frontal face, public domain
    return image, detect_faces(image)


@pytest.fixture(scope="module")
def hopper(weights):
    return photos.hopper()  # [600, 512, 3]


def _check_geometry(box, points, iod_range):
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = points
    assert lex < nx < rex and mlx < mrx  # left = smaller x in the image
    assert max(ley, rey) < ny < min(mly, mry)  # eyes above nose above mouth
    assert iod_range[0] < np.hypot(rex - lex, rey - ley) < iod_range[1]
    assert (points >= box[:2]).all() and (points <= box[2:]).all()


def test_astronaut_one_face_plausible_landmarks(astronaut):
    image, faces = astronaut
    assert len(faces) == 1
    box, score, points = faces[0].box, faces[0].score, faces[0].landmarks
    assert isinstance(faces[0], Face) and faces[0].crop is None and faces[0].embedding is None
    assert box.shape == (4,) and isinstance(score, float) and score > 0.99
    assert points.shape == (5, 2)
    # face by eye
    assert 178 - 10 < box[0] < box[2] < 268 + 10 and 58 - 10 < box[1] < box[3] < 175 + 10
    _check_geometry(box, points, iod_range=(35, 55))  # eyes ~43 px apart in this 512-px photo
    matrix = similarity_transform(points, ARCFACE_112)
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    # a face shape (she smiles: mouth ~6 px off)
    assert np.linalg.norm(mapped - ARCFACE_112, axis=1).max() < 8


def test_aligned_crop_redetects_on_the_template(astronaut):
    image, [face] = astronaut
    crop = align_face(image, face.landmarks)  # [112, 112, 3]
    faces = detect_faces(crop)
    assert len(faces) == 1
    assert np.linalg.norm(faces[0].landmarks - ARCFACE_112, axis=1).max() < 8


def test_landmarks_follow_flip_and_scale(astronaut):
    image, [face] = astronaut
    points = face.landmarks
    tol = 0.1 * np.linalg.norm(points[1] - points[0])
    [mirrored] = detect_faces(np.ascontiguousarray(image[:, ::-1]))
    flipped = mirrored.landmarks.copy()
    flipped[:, 0] = image.shape[1] - flipped[:, 0]
    assert np.abs(flipped[[1, 0, 2, 4, 3]] - points).max() < tol  # mirror swaps left and right
    [half] = detect_faces(cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
    assert np.abs(half.landmarks * 2 - points).max() < tol


def test_grace_hopper_one_face(hopper):
    faces = detect_faces(hopper)
    assert len(faces) == 1 and faces[0].score > 0.99
    _check_geometry(faces[0].box, faces[0].landmarks, iod_range=(70, 110))


def test_no_face_in_blank_or_noise(weights):
    assert detect_faces(np.full((240, 320, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect_faces(noise) == []


def test_folder_landmarks_feed_align_folder(astronaut, tmp_path):
    image, [face] = astronaut
    points = face.landmarks
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    cv2.imwrite(str(src / "a" / "astro.png"), image[..., ::-1])
    cv2.imwrite(str(src / "blank.png"), np.zeros((100, 100, 3), np.uint8))
    summary = landmarks_for_folder(src, tmp_path / "lm.csv", workers=1)
    assert summary == {"images": 2, "faces": 1, "no_face": 1, "several": 0, "kept": 1,
                       "all_faces": False}
    assert (tmp_path / "lm.csv").read_text().splitlines()[0] == ",".join(HEADER)  # the old format
    table = read_landmarks(tmp_path / "lm.csv")
    assert np.abs(table["a/astro.png"] - points).max() < 1e-3 and np.isnan(table["blank.png"]).all()
    result = align_folder(src, tmp_path / "out", tmp_path / "lm.csv", workers=1)
    assert result["aligned"] == 1 and result["skipped"] == 1


def test_cli_align_with_the_detector(astronaut, tmp_path):
    image, _ = astronaut
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "nasa").mkdir(parents=True)
    cv2.imwrite(str(src / "nasa" / "astronaut.png"), image[..., ::-1])
    assert main(["align", str(src), str(out), "--detector", "mtcnn", "--workers", "1"]) == 0
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert crops == ["nasa/astronaut.png"] and read_image(out / crops[0]).shape == (112, 112, 3)
    # header only: nothing skipped
    assert (out / "skipped.csv").read_text().splitlines() == ["image,reason"]
    assert list(read_landmarks(out / "landmarks.csv")) == ["nasa/astronaut.png"]
    manifest = json.loads((out / "align.json").read_text())
    assert (manifest["aligned"], manifest["skipped"], manifest["size"]) == (1, 0, 112)


def test_turned_photo_main_face_is_the_real_face_not_a_small_central_false_one(astronaut):
    """Astronaut turned by 60°, canvas expanded ([699, 699, 3]): MTCNN finds her face (~105 px,
    0.98) off-centre and a ~26-px false detection (0.90) near the centre; a merit of
    area - 2 · d² picks the false one."""
    image = photos.rotate_expand(astronaut[0], 60)
    faces = detect_faces(image)
    sides = [float(np.sqrt(np.prod(f.box[2:] - f.box[:2]))) for f in faces]
    assert len(faces) >= 2 and min(sides) < 40  # the small false detection is there
    assert 90 < sides[0] < 115 and faces[0].score > 0.95  # and the real face comes first
    assert main_face(faces, *image.shape[:2]) is faces[0]
    assert (faces[0].landmarks >= faces[0].box[:2]).all()
    assert (faces[0].landmarks <= faces[0].box[2:]).all()


@pytest.fixture(scope="module")
def collage(astronaut, hopper):
    """Astronaut, cameraman (grey -> RGB) and Grace Hopper, each ~200 px high, side by side:
    ([200, 571, 3] RGB, the x ranges of the 3 photos)."""
    data = pytest.importorskip("skimage.data")
    tiles = [astronaut[0], np.stack([data.camera()] * 3, axis=-1), hopper]
    tiles = [cv2.resize(p, (round(p.shape[1] * 200 / p.shape[0]), 200),
                        interpolation=cv2.INTER_AREA) for p in tiles]
    edges = np.cumsum([0] + [p.shape[1] for p in tiles])
    return np.ascontiguousarray(np.hstack(tiles)), list(zip(edges[:-1], edges[1:], strict=True))


def test_collage_every_face_found_main_first(collage):
    image, spans = collage
    faces = detect_faces(image)
    centres = [(f.box[0] + f.box[2]) / 2 for f in faces]
    # one face in each photo
    assert sorted(sum(a < x < b for x in centres) for a, b in spans) == [1, 1, 1]
    assert len(faces) == 3 and all(f.score > 0.95 for f in faces)
    sides = [f.box[2] - f.box[0] for f in faces]
    assert sides[0] == max(sides) and spans[2][0] < centres[0]  # Grace Hopper, the largest face


def _collage_folder(tmp_path, collage, astronaut):
    src = tmp_path / "src"
    (src / "group").mkdir(parents=True)
    (src / "solo").mkdir()
    cv2.imwrite(str(src / "group" / "collage.png"), collage[0][..., ::-1])
    cv2.imwrite(str(src / "solo" / "astronaut.png"), astronaut[0][..., ::-1])
    return src


def test_cli_align_all_faces_writes_every_face_and_counts_the_photo(collage, astronaut, tmp_path,
                                                                     caplog):
    src, out = _collage_folder(tmp_path, collage, astronaut), tmp_path / "out"
    argv = ["align", str(src), str(out), "--detector", "mtcnn", "--all-faces", "--workers", "1"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert ("mtcnn: faces found in 2 of 2 photos; 1 photo(s) show several faces (--all-faces: "
            "wrote all 4 faces)") in caplog.text
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert crops == ["group/collage.png", "group/collage_face1.png", "group/collage_face2.png",
                     "solo/astronaut.png"]
    assert all(read_image(out / c).shape == (112, 112, 3) for c in crops)
    assert (out / "landmarks.csv").read_text().splitlines()[0] == ",".join(FACE_HEADER)
    table = read_face_landmarks(out / "landmarks.csv")
    assert sorted(table) == [("group/collage.png", 0), ("group/collage.png", 1),
                             ("group/collage.png", 2), ("solo/astronaut.png", 0)]
    faces = detect_faces(collage[0])  # the CSV keeps the order of detect_faces: main face first
    for k, face in enumerate(faces):
        assert np.abs(table["group/collage.png", k] - face.landmarks).max() < 1e-3
    manifest = json.loads((out / "align.json").read_text())
    assert (manifest["aligned"], manifest["skipped"]) == (4, 0)
    assert manifest["detection"] == {"images": 2, "faces": 2, "no_face": 0, "several": 1,
                                     "kept": 4, "all_faces": True, "detector": "mtcnn"}


def test_cli_align_main_face_only_still_counts_several(collage, astronaut, tmp_path, caplog):
    src, out = _collage_folder(tmp_path, collage, astronaut), tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert main(["align", str(src), str(out), "--detector", "mtcnn", "--workers", "1"]) == 0
    assert ("mtcnn: faces found in 2 of 2 photos; 1 photo(s) show several faces (kept the main "
            "one; --all-faces writes them all)") in caplog.text
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert crops == ["group/collage.png", "solo/astronaut.png"]
    assert (out / "landmarks.csv").read_text().splitlines()[0] == ",".join(HEADER)
    main_points = detect_faces(collage[0])[0].landmarks
    written = read_landmarks(out / "landmarks.csv")["group/collage.png"]
    assert np.abs(written - main_points).max() < 1e-3
    detection = json.loads((out / "align.json").read_text())["detection"]
    assert (detection["several"], detection["kept"], detection["all_faces"]) == (1, 2, False)


def _overlap(a, b, mode):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    denom = min(area_a, area_b) if mode == "min" else area_a + area_b - iw * ih
    return iw * ih / denom


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_matches_brute_force(mode):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.hstack([xy, xy + rng.uniform(5, 40, (300, 2))])
    scores = rng.permutation(300) / 300.0  # distinct scores: one right order
    for iou in (0.3, 0.5, 0.7):
        kept = []
        for i in sorted(range(300), key=lambda k: -scores[k]):
            if all(_overlap(boxes[i], boxes[j], mode) <= iou for j in kept):
                kept.append(i)
        assert mtcnn.nms(boxes, scores, iou, mode).tolist() == kept
    assert mtcnn.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("h, w", [(12, 12), (31, 47), (64, 50)])
def test_pnet_output_shapes(h, w):
    torch.manual_seed(0)
    prob, off = mtcnn.PNet()(torch.randn(2, 3, h, w))
    oh, ow = (-(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4)  # conv3, ceil-pool 2/2, conv3, conv3
    assert prob.shape == (2, oh, ow) and off.shape == (2, 4, oh, ow)
    assert ((prob >= 0) & (prob <= 1)).all()


def test_rnet_onet_output_shapes():
    prob, off = mtcnn.RNet()(torch.randn(3, 3, 24, 24))
    assert prob.shape == (3,) and off.shape == (3, 4)
    prob, off, marks = mtcnn.ONet()(torch.randn(3, 3, 48, 48))
    assert prob.shape == (3,) and off.shape == (3, 4) and marks.shape == (3, 10)


def test_box_helpers():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    assert mtcnn.square(boxes).tolist() == [[0.0, 20.0, 40.0, 60.0]]
    moved = mtcnn.regress(boxes, np.array([[0.1, -0.1, 0.5, 0.0]]))
    assert moved.tolist() == [[12.0, 16.0, 40.0, 60.0]]
    scales = mtcnn.pyramid_scales(100, 200, min_face=20, factor=0.5)
    assert scales == [0.6, 0.3, 0.15] and all(100 * s >= 12 for s in scales)


def test_crops_pad_with_black_outside_the_image():
    image = np.full((10, 10, 3), 255, np.uint8)
    # left and bottom halves outside
    patch = mtcnn.crops(image, np.array([[-10.0, 0.0, 10.0, 20.0]]), 4)
    raw = patch[0, 0] * 128 + 127.5  # back to pixel values, [4, 4]
    assert torch.allclose(raw[:2, 2:], torch.full((2, 2), 255.0))
    assert torch.allclose(raw[:, :2], torch.zeros(4, 2))
    assert torch.allclose(raw[2:], torch.zeros(2, 4))


def test_missing_weights_name_the_pip_command(monkeypatch):
    monkeypatch.setattr(mtcnn.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FacelabError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        mtcnn.weights_dir()


def test_bad_image_is_a_clear_error():
    for bad in (np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.float32), [[0, 0, 0]]):
        with pytest.raises(FacelabError, match="RGB uint8"):
            detect_faces(bad)


def test_pretrained_state_dicts_fit_the_definitions(weights):
    for name, cls in mtcnn.NETS.items():
        state = torch.load(weights / f"{name}.pt", map_location="cpu", weights_only=True)
        net = cls()
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in state.items()} == expected
