import json

import cv2
import numpy as np
import pytest
import torch

from facelab.align import ARCFACE_112, align_face, mtcnn, similarity_transform
from facelab.align.detect import detect_faces, landmarks_for_folder, main_face
from facelab.align.folder import align_folder, read_landmarks
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
    data = pytest.importorskip("skimage.data")
    image = data.astronaut()  # [512, 512, 3] RGB, one frontal face, public domain
    return image, detect_faces(image)


@pytest.fixture(scope="module")
def hopper(weights):
    import matplotlib.cbook

    # [600, 512, 3]
    return read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _check_geometry(box, points, iod_range):
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = points
    assert lex < nx < rex and mlx < mrx  # left = smaller x in the image
    assert max(ley, rey) < ny < min(mly, mry)  # eyes above nose above mouth
    assert iod_range[0] < np.hypot(rex - lex, rey - ley) < iod_range[1]
    assert (points >= box[:2]).all() and (points <= box[2:]).all()


def test_astronaut_one_face_plausible_landmarks(astronaut):
    image, faces = astronaut
    assert len(faces) == 1
    box, score, points = faces[0]
    assert score > 0.99 and points.shape == (5, 2)
    # face by eye
    assert 178 - 10 < box[0] < box[2] < 268 + 10 and 58 - 10 < box[1] < box[3] < 175 + 10
    _check_geometry(box, points, iod_range=(35, 55))  # eyes ~43 px apart in this 512-px photo
    matrix = similarity_transform(points, ARCFACE_112)
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    # a face shape (she smiles: mouth ~6 px off)
    assert np.linalg.norm(mapped - ARCFACE_112, axis=1).max() < 8


def test_aligned_crop_redetects_on_the_template(astronaut):
    image, [(_, _, points)] = astronaut
    crop = align_face(image, points)  # [112, 112, 3]
    faces = detect_faces(crop)
    assert len(faces) == 1
    assert np.linalg.norm(faces[0][2] - ARCFACE_112, axis=1).max() < 8


def test_landmarks_follow_flip_and_scale(astronaut):
    image, [(_, _, points)] = astronaut
    tol = 0.1 * np.linalg.norm(points[1] - points[0])
    [(_, _, flipped)] = detect_faces(np.ascontiguousarray(image[:, ::-1]))
    flipped[:, 0] = image.shape[1] - flipped[:, 0]
    assert np.abs(flipped[[1, 0, 2, 4, 3]] - points).max() < tol  # mirror swaps left and right
    [(_, _, half)] = detect_faces(cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
    assert np.abs(half * 2 - points).max() < tol


def test_grace_hopper_one_face(hopper):
    faces = detect_faces(hopper)
    assert len(faces) == 1 and faces[0][1] > 0.99
    _check_geometry(faces[0][0], faces[0][2], iod_range=(70, 110))


def test_no_face_in_blank_or_noise(weights):
    assert detect_faces(np.full((240, 320, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect_faces(noise) == []


def test_folder_landmarks_feed_align_folder(astronaut, tmp_path):
    image, [(_, _, points)] = astronaut
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    cv2.imwrite(str(src / "a" / "astro.png"), image[..., ::-1])
    cv2.imwrite(str(src / "blank.png"), np.zeros((100, 100, 3), np.uint8))
    summary = landmarks_for_folder(src, tmp_path / "lm.csv", workers=1)
    assert summary == {"images": 2, "faces": 1, "no_face": 1}
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


def test_main_face_prefers_large_and_central():
    def face(x1, y1, x2, y2):
        return np.array([x1, y1, x2, y2], float), 0.9, np.zeros((5, 2))

    faces = [face(0, 0, 60, 60), face(170, 170, 230, 230), face(150, 150, 190, 190)]
    assert main_face(faces, 400, 400) is faces[1]  # same size as the corner one, but central
    assert main_face([], 400, 400) is None


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
