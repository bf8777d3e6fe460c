"""`facelab embed`, `verify` and `gallery` on real photographs, through the CLI's main()."""

import csv
import json

import cv2
import numpy as np
import pytest
from tests.references import photos
from tests.references.float_paths import DIST_TOL

from facelab.align.mtcnn import weights_dir
from facelab.cli import main
from facelab.errors import FacelabError
from facelab.io import encode_image
from facelab.recognize import Recognizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    try:
        weights_dir()
    except FacelabError:
        pytest.skip("MTCNN weights not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    pytest.importorskip("skimage")
    root = tmp_path_factory.mktemp("cli")
    run = photos.model_run(root / "run", {"val": {"accuracy": {"threshold": 1.0}}})
    pics = root / "photos"
    (pics / "sub").mkdir(parents=True)
    images = {
        "astronaut.jpg": photos.astronaut(),
        "sub/collage.png": photos.collage([photos.camera(), photos.hopper()]),
        "wall.jpg": np.full((120, 160, 3), 90, np.uint8),
        "hopper.jpg": photos.hopper(),
        # the astronaut again, another photo of her: smaller and mirrored
        "astronaut2.jpg": cv2.resize(photos.astronaut()[:, ::-1], (400, 400)),
    }
    for name, image in images.items():
        (pics / name).write_bytes(encode_image(image, "." + name.rsplit(".", 1)[1]))
    return run, pics


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_embed_a_folder_every_face_and_an_index(setup, tmp_path):
    run, pics = setup
    out = tmp_path / "faces.npz"
    assert main(["embed", str(run), str(pics), "--out", str(out), "--precision", "fp32"]) == 0
    with np.load(out) as z:
        got = {k: z[k] for k in z.files}
    sources = [str(pics / n) for n in ("astronaut.jpg", "astronaut2.jpg", "hopper.jpg")]
    collage = str(pics / "sub/collage.png")
    assert sorted(got["source"].tolist()) == sorted(sources + [collage, collage])
    assert got["embedding"].shape == (5, 16) and got["landmarks"].shape == (5, 5, 2)
    assert got["box"].shape == (5, 4) and got["score"].min() > 0.9
    assert json.loads(str(got["model"]))["backbone"] == "tiny"
    # each row is the Recognizer's own embedding of that face
    rec = Recognizer.load(run, precision="fp32")
    for source in set(got["source"].tolist()):
        rows = np.flatnonzero(got["source"] == source)
        faces = rec.embed(source)
        assert got["face"][rows].tolist() == list(range(len(faces)))
        np.testing.assert_allclose(got["embedding"][rows], [f.embedding for f in faces],
                                   atol=DIST_TOL)
    table = _rows(out.with_suffix(".csv"))
    assert {r["status"] for r in table} == {"ok", "no face"}
    assert [r["source"] for r in table if r["status"] == "no face"] == [str(pics / "wall.jpg")]
    assert len([r for r in table if r["status"] == "ok"]) == 5


def test_embed_lists_an_unreadable_photo_and_fails(setup, tmp_path, capsys):
    run, pics = setup
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "faces.npz"
    assert main(["embed", str(run), str(pics / "astronaut.jpg"), str(bad), "--out", str(out),
                 "--precision", "fp32"]) == 2
    assert "1 photo(s) could not be read" in capsys.readouterr().err
    table = _rows(out.with_suffix(".csv"))  # written, with the unreadable photo named
    assert [r["status"].split(":")[0] for r in table] == ["ok", "unreadable"]
    with np.load(out) as z:
        assert z["embedding"].shape == (1, 16)


@pytest.mark.parametrize("args, match", [
    (["no-such-folder"], "no-such-folder: no such file or folder"),
    (["--out", "x.txt"], "the output must be a .npz file"),
])
def test_embed_bad_arguments(setup, tmp_path, capsys, args, match):
    run, pics = setup
    argv = ["embed", str(run), str(pics / "astronaut.jpg"), "--out", str(tmp_path / "f.npz")]
    argv = argv[:-2] + args if args[0] == "--out" else argv[:3] + args + argv[3:]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_verify_exit_status_and_json(setup, capsys):
    run, pics = setup
    a, b = str(pics / "astronaut.jpg"), str(pics / "hopper.jpg")
    rec = Recognizer.load(run, precision="fp32")
    d = rec.compare(a, b).distance
    fp32 = ["--precision", "fp32"]
    assert main(["verify", str(run), a, b, "--threshold", f"{d + 1e-3}", "--json", *fp32]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same"] is True and abs(out["distance"] - d) < 1e-5 and out["threshold_set"] is None
    assert main(["verify", str(run), a, b, "--threshold", f"{d - 1e-3}", *fp32]) == 1
    assert capsys.readouterr().out.startswith("different people: cosine")
    assert main(["verify", str(run), a, b, *fp32]) == (0 if d < 1.0 else 1)
    assert "(best accuracy on val)" in capsys.readouterr().out
    assert main(["verify", str(run), a, str(pics / "wall.jpg")]) == 2
    assert "wall.jpg: no face found" in capsys.readouterr().err


def test_gallery_add_identify_list_remove(setup, tmp_path, capsys):
    run, pics = setup
    gal = str(tmp_path / "gallery")
    base = ["gallery", "--gallery", gal, "--model", str(run), "--precision", "fp32"]
    rec = Recognizer.load(run, precision="fp32")
    probe = pics / "astronaut2.jpg"
    mate, other = (rec.compare(probe, pics / n).distance for n in ("astronaut.jpg", "hopper.jpg"))
    assert mate < other, "this model does not rank the mate first: choose another seed"
    threshold = f"{(mate + other) / 2}"  # between the two: the mate passes, the other does not
    assert main(base + ["add", "eileen", str(pics / "astronaut.jpg")]) == 0
    assert main(base + ["add", "grace", str(pics / "hopper.jpg")]) == 0
    capsys.readouterr()
    assert main(base + ["identify", str(probe), str(pics / "wall.jpg"), "--json",
                        "--threshold", threshold]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["identity"] for r in records] == ["eileen", None]
    assert [c[0] for c in records[0]["candidates"]] == ["eileen", "grace"]
    assert abs(records[0]["score"] - (1 - mate / 2)) < 1e-4  # one photo each: the template is it
    # below the threshold: unknown
    assert main(base + ["identify", str(probe), "--json", "--threshold", f"{mate / 2}"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["identity"] == "unknown"
    assert main(["gallery", "--gallery", gal, "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["eileen", "grace"]
    assert main(["gallery", "--gallery", gal, "remove", "grace"]) == 0
    assert main(["gallery", "--gallery", gal, "list"]) == 0
    assert [x.split("\t")[0] for x in capsys.readouterr().out.splitlines()] == ["eileen"]


def test_gallery_errors(setup, tmp_path, capsys):
    run, pics = setup
    gal = str(tmp_path / "gallery")
    base = ["gallery", "--gallery", gal, "--model", str(run)]
    assert main(base + ["add", "x", str(pics / "astronaut.jpg"), str(pics / "wall.jpg")]) == 2
    assert "wall.jpg: no face found; nothing was added to 'x'" in capsys.readouterr().err
    assert main(["gallery", "--gallery", gal, "add", "x", str(pics / "astronaut.jpg")]) == 2
    assert "give --model" in capsys.readouterr().err
    assert main(base + ["add", "x", str(pics / "astronaut.jpg")]) == 0
    other = photos.model_run(tmp_path / "other", seed=1)
    assert main(["gallery", "--gallery", gal, "--model", str(other), "identify",
                 str(pics / "hopper.jpg"), "--threshold", "1"]) == 2
    assert "weights_sha256" in capsys.readouterr().err  # another model's gallery is refused
    assert main(["gallery", "--gallery", str(tmp_path / "none"), "list"]) == 2
    assert "no gallery there" in capsys.readouterr().err
