"""Fixtures of the service's tests: a small model run, the real photos as uploads, and apps.

The photos are scikit-image's astronaut, matplotlib's Grace Hopper and a collage of the camera
man and Hopper (two faces), shrunk to under 300 pixels: MTCNN's cost grows with the pixel count,
and these faces are large enough to be found at that size.
"""

import warnings
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
from tests.references import photos

from facelab.align.mtcnn import weights_dir
from facelab.errors import FacelabError
from facelab.io import encode_image
from facelab.recognize import Recognizer
from facelab.serve import Limits, create_app

THRESHOLD = 1.0  # the stored best-accuracy threshold of the test model (squared L2 distance)


def _small(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """(run folder, Recognizer) of a tiny untrained model with a stored threshold."""
    try:
        weights_dir()
    except FacelabError:
        pytest.skip("MTCNN weights not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    pytest.importorskip("skimage")
    run = photos.model_run(tmp_path_factory.mktemp("serve") / "run",
                           {"val": {"accuracy": {"threshold": THRESHOLD}}})
    return run, Recognizer.load(run, precision="fp32")


@pytest.fixture(scope="session")
def rec(model):
    return model[1]


@pytest.fixture(scope="session")
def pictures(model):
    """{file name: encoded bytes}: astronaut (2 photos of her), hopper, a collage with two faces
    and a wall without any."""
    images = {
        "astronaut.jpg": _small(photos.astronaut(), 192),
        "astronaut2.jpg": _small(photos.astronaut()[:, ::-1], 160),  # mirrored, smaller
        "hopper.jpg": _small(photos.hopper(), 192),
        "collage.png": photos.collage([photos.camera(), photos.hopper()], height=120, gap=20),
        "wall.jpg": np.full((60, 80, 3), 90, np.uint8),
    }
    return {name: encode_image(image, "." + name.rsplit(".", 1)[1])
            for name, image in images.items()}


@pytest.fixture(scope="session")
def direct(rec, pictures):
    """{photo name: Recognizer.embed of its bytes}: the answers the service must give."""
    return {name: rec.embed(data) for name, data in pictures.items()}


@contextmanager
def _client(rec, gallery, api_key=None, limits=None, **kwargs):
    with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its TestClient; httpx works
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient
    app = create_app(rec, gallery, api_key=api_key, limits=limits or Limits())
    with TestClient(app, **kwargs) as client:
        yield client


@pytest.fixture(scope="session")
def client_for():
    """client_for(rec, gallery, api_key=None, limits=None, **TestClient options): a context
    manager giving a TestClient of a fresh app on `gallery`, shut down (gallery closed) after."""
    return _client
