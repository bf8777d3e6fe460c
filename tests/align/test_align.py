import cv2
import numpy as np
import pytest

from facelab.align import ARCFACE_112, TEMPLATES, align_face, similarity_transform, template_for
from facelab.errors import FacelabError


def _similarity(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize("scale,angle,tx,ty",
                         [(1.0, 0.0, 0, 0), (0.4, 0.7, 12.5, -3), (2.3, -2.9, -40, 80)])
def test_recovers_known_similarity(scale, angle, tx, ty):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    m = _similarity(scale, angle, tx, ty)
    np.testing.assert_allclose(similarity_transform(src, _apply(m, src)), m, atol=1e-9)


def test_never_reflects():
    src = np.array([[0.0, 0], [10, 0], [5, 5], [2, 10], [8, 10]])
    mirrored = src * [-1, 1]  # a reflection fits exactly, a similarity must not
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_least_squares_optimum_against_perturbation():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = _apply(_similarity(0.8, 0.3, 5, 7), src) + rng.normal(0, 2, (5, 2))
    m = similarity_transform(src, dst)
    best = ((_apply(m, src) - dst) ** 2).sum()
    for _ in range(200):  # any nearby similarity fits worse
        d = rng.normal(0, 1e-3, 4)
        a, b = m[0, 0] + d[0], m[1, 0] + d[1]
        p = np.array([[a, -b, m[0, 2] + d[2]], [b, a, m[1, 2] + d[3]]])
        assert ((_apply(p, src) - dst) ** 2).sum() >= best - 1e-9


def test_align_face_puts_landmarks_on_template():
    # paint 5 dots at known places of a photo; after alignment they sit on the template
    photo = np.zeros((300, 300, 3), np.uint8)
    photo_lm = _apply(_similarity(1.9, 0.4, 60, 20), ARCFACE_112)  # a face 1.9x larger, rotated
    for x, y in photo_lm:
        cv2.circle(photo, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1,
                   cv2.LINE_AA, 4)
    out = align_face(photo, photo_lm)
    assert out.shape == (112, 112, 3)
    for x, y in ARCFACE_112:
        assert out[int(round(y)), int(round(x))].mean() > 200
    assert out[5, 5].sum() == 0  # black border / background


def test_template_96x112_is_shifted():
    pts, (w, h) = template_for("arcface96x112")
    np.testing.assert_allclose(pts, ARCFACE_112 - [8, 0])
    assert (w, h) == (96, 112)
    pts2, size2 = template_for("arcface112", size=224)
    np.testing.assert_allclose(pts2, ARCFACE_112 * 2)
    assert size2 == (224, 224)


def test_template_sizes_are_native():
    # size is the crop height, relative to each template's own (dlib150: 150, not 112)
    pts, wh = template_for("dlib150", size=150)
    assert wh == (150, 150)
    np.testing.assert_allclose(pts, TEMPLATES["dlib150"][0])
    pts, wh = template_for("dlib150", size=75)
    assert wh == (75, 75)
    np.testing.assert_allclose(pts, TEMPLATES["dlib150"][0] / 2)
    assert template_for("arcface96x112", size=224)[1] == (192, 224)


@pytest.mark.parametrize(
    "bad",
    [np.full((5, 2), np.nan), np.zeros((5, 2)), np.zeros((4, 2)),
     np.array([[1, 1]] * 2 + [[3, 4]] * 3, float)],
)
def test_bad_landmarks_refused(bad):
    with pytest.raises(FacelabError):
        align_face(np.zeros((50, 50, 3), np.uint8), bad)
