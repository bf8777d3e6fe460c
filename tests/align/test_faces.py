"""The Face record and the order of the faces of a photo (face_merit), on synthetic Face lists:
no detector weights needed."""

import dataclasses

import numpy as np
import pytest

from facelab.align.detect import Face, face_merit, main_face, rank_faces
from facelab.errors import FacelabError


def _face(x1, y1, x2, y2, score=0.9):
    return Face(np.array([x1, y1, x2, y2], float), score, np.zeros((5, 2)))


def test_face_fields_in_order():
    names = [f.name for f in dataclasses.fields(Face)]
    assert names == ["box", "score", "landmarks", "crop", "embedding"]
    face = _face(0, 0, 10, 10)
    assert face.crop is None and face.embedding is None
    assert face != _face(0, 0, 10, 10) and face == face  # by identity: arrays inside


def test_large_confident_face_off_centre_beats_small_central_one():
    corner = _face(10, 10, 110, 110, score=0.99)  # 100 px, far from the centre of 400 × 400
    central = _face(190, 190, 215, 215, score=0.9)  # 25 px, at the centre
    assert rank_faces([central, corner], 400, 400) == [corner, central]
    assert main_face([central, corner], 400, 400) is corner


def test_same_size_the_central_face_wins():
    faces = [_face(0, 0, 60, 60), _face(170, 170, 230, 230), _face(150, 150, 190, 190)]
    assert main_face(faces, 400, 400) is faces[1]  # same size as the corner one, but central
    assert rank_faces(faces, 400, 400)[0] is faces[1]


def test_same_size_and_place_the_higher_score_wins():
    low, high = _face(100, 100, 160, 160, score=0.8), _face(100, 100, 160, 160, score=0.95)
    assert rank_faces([low, high], 300, 400) == [high, low]
    assert rank_faces([high, low], 300, 400) == [high, low]


def test_centrality_is_a_mild_factor():
    """A face in the very corner keeps half the merit of the same face at the centre."""
    centre = _face(170, 170, 230, 230)
    corner = _face(-30, -30, 30, 30)  # box centre on the image corner
    assert face_merit(centre, 400, 400) == pytest.approx(0.9 * 60)
    assert face_merit(corner, 400, 400) == pytest.approx(0.5 * 0.9 * 60)


def test_exact_ties_keep_the_detector_order_and_no_face_is_none():
    a, b = _face(0, 0, 50, 50), _face(0, 0, 50, 50)
    assert rank_faces([a, b], 100, 100) == [a, b] and rank_faces([b, a], 100, 100) == [b, a]
    assert main_face([], 400, 400) is None and rank_faces([], 400, 400) == []


def test_bad_photo_size_is_a_clear_error():
    with pytest.raises(FacelabError, match="photo's size"):
        rank_faces([_face(0, 0, 10, 10)], 0, 100)
