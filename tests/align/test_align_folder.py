import json

import cv2
import numpy as np
import pytest

from facelab.align import ARCFACE_112
from facelab.align.folder import (
    FACE_HEADER,
    align_folder,
    face_output_name,
    read_face_landmarks,
    read_landmarks,
)
from facelab.errors import FacelabError


def _photo(path, landmarks):
    img = np.full((160, 160, 3), 40, np.uint8)
    for x, y in landmarks:
        cv2.circle(img, (int(x), int(y)), 2, (250, 250, 250), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def test_folder_alignment_skips_and_reports_bad_faces(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    good = ARCFACE_112 * 1.2 + 10
    _photo(src / "a" / "0.png", good)
    _photo(src / "a" / "1.png", good)
    _photo(src / "b" / "0.png", good)
    _photo(src / "b" / "nolandmarks.png", good)
    rows = ["image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    rows.append("a/0.png," + ",".join(f"{v:.3f}" for v in good.ravel()))
    rows.append("a/1.png," + ",".join(["nan"] * 9 + ["3"]))
    rows.append("b/0.png," + ",".join(["5"] * 10))  # all points coincide
    (tmp_path / "lm.csv").write_text("\n".join(rows) + "\n")
    summary = align_folder(src, out, tmp_path / "lm.csv", workers=1)
    assert summary == {"aligned": 1, "skipped": 3, "size": 112}
    crop = cv2.imread(str(out / "a" / "0.png"))
    assert crop.shape == (112, 112, 3)
    x, y = ARCFACE_112[0]
    assert crop[int(round(y)), int(round(x))].mean() > 150  # the painted eye landed on the template
    assert not (out / "a" / "1.png").exists() and not (out / "b" / "0.png").exists()
    skipped = (out / "skipped.csv").read_text()
    assert "a/1.png" in skipped and "non-finite" in skipped and "b/nolandmarks.png" in skipped
    assert json.loads((out / "align.json").read_text())["aligned"] == 1


@pytest.mark.parametrize(
    "text,msg",
    [
        ("img,x\n", "header must be"),
        ("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na/0.png,1,2\n", r"lm.csv:2: expected 11 fields"),
        ("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na/0.png," + "z," * 9 + "1\n",
         r"lm.csv:2: non-numeric"),
        ("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\nzz.png," + "1," * 9 + "1\n", "'zz.png' not found"),
        ("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5,face\na/0.png," + "1," * 9 + "1\n",
         r"lm.csv:2: expected 12 fields"),
        ("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5,face\na/0.png," + "1," * 10 + "-1\n",
         r"lm.csv:2: face must be a whole number >= 0"),
        ("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5,face\na/0.png," + "1," * 10 + "one\n",
         r"face must be a whole number"),
    ],
)
def test_bad_landmark_files(tmp_path, text, msg):
    _photo(tmp_path / "src" / "a" / "0.png", ARCFACE_112)
    (tmp_path / "lm.csv").write_text(text)
    with pytest.raises(FacelabError, match=msg):
        align_folder(tmp_path / "src", tmp_path / "out", tmp_path / "lm.csv", workers=1)


def test_empty_landmark_row_means_no_face(tmp_path):
    _photo(tmp_path / "src" / "a" / "0.png", ARCFACE_112)
    (tmp_path / "lm.csv").write_text("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na/0.png" + "," * 10
                                     + "\n")
    summary = align_folder(tmp_path / "src", tmp_path / "out", tmp_path / "lm.csv", workers=1)
    assert summary["skipped"] == 1
    assert "no face found" in (tmp_path / "out" / "skipped.csv").read_text()


def _landmarks_csv(path, names, points):
    rows = ["image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    rows += [name + "," + ",".join(f"{v:.3f}" for v in points.ravel()) for name in names]
    path.write_text("\n".join(rows) + "\n")


def test_bad_photos_are_skipped_with_their_reason(tmp_path):
    """A zero-byte, an undecodable and a truncated photo: skipped.csv rows with the reason, no
    traceback."""
    src, out, good = tmp_path / "src", tmp_path / "out", ARCFACE_112 * 1.2 + 10
    _photo(src / "a" / "ok.jpg", good)
    jpeg = (src / "a" / "ok.jpg").read_bytes()
    (src / "a" / "empty.jpg").write_bytes(b"")
    (src / "a" / "junk.png").write_bytes(b"not a picture at all")
    (src / "b" / "cut.jpg").parent.mkdir()
    (src / "b" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    names = ["a/ok.jpg", "a/empty.jpg", "a/junk.png", "b/cut.jpg"]
    _landmarks_csv(tmp_path / "lm.csv", names, good)
    from facelab.cli import main

    argv = ["align", str(src), str(out), "--landmarks", str(tmp_path / "lm.csv"), "--workers", "2"]
    assert main(argv) == 0
    rows = dict(line.split(",", 1) for line in (out / "skipped.csv").read_text().splitlines())
    assert sorted(rows) == ["a/empty.jpg", "a/junk.png", "b/cut.jpg", "image"]
    assert rows["a/empty.jpg"] == f"{src / 'a' / 'empty.jpg'}: empty file (0 bytes); not an image"
    assert "cannot decode" in rows["a/junk.png"]
    assert "Premature end of JPEG file" in rows["b/cut.jpg"]
    assert json.loads((out / "align.json").read_text()) == {"aligned": 1, "skipped": 3, "size": 112}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["a/ok.jpg"]


def test_output_is_checked_writable_first(tmp_path, monkeypatch):
    _photo(tmp_path / "src" / "a" / "0.png", ARCFACE_112)
    _landmarks_csv(tmp_path / "lm.csv", ["a/0.png"], ARCFACE_112)
    (tmp_path / "afile").write_text("")
    import facelab.align.folder as folder_mod

    monkeypatch.setattr(folder_mod, "_align_one", lambda *a: pytest.fail("aligned first"))
    with pytest.raises(FacelabError, match=r"afile/out: output folder is not writable"):
        align_folder(tmp_path / "src", tmp_path / "afile" / "out", tmp_path / "lm.csv", workers=1)
    from facelab.cli import main

    argv = ["align", str(tmp_path / "src"), str(tmp_path / "afile" / "o"), "--landmarks",
            str(tmp_path / "lm.csv")]
    assert main(argv) == 2


def test_face_output_names():
    assert face_output_name("a/b.jpg", 0) == "a/b.jpg"  # the main face keeps the photo's name
    assert face_output_name("a/b.jpg", 2) == "a/b_face2.jpg"
    assert face_output_name("c.d.png", 1) == "c.d_face1.png"


def test_face_column_aligns_every_face(tmp_path):
    """A landmarks file with a `face` column: one crop per face, the main face (0, or an empty
    field) under the photo's name, the others next to it as <stem>_face<k><suffix>."""
    src, out = tmp_path / "src", tmp_path / "out"
    one, two = ARCFACE_112 * 0.5 + 5, ARCFACE_112 * 0.5 + 80  # two faces in one 160 × 160 photo
    _photo(src / "a" / "0.png", np.vstack([one, two]))
    _photo(src / "b" / "0.png", one)
    rows = [",".join(FACE_HEADER)]
    rows += [f"a/0.png,{','.join(f'{v:.3f}' for v in pts.ravel())},{k}"
             for k, pts in ((1, two), (0, one))]
    rows.append(f"b/0.png,{','.join(f'{v:.3f}' for v in one.ravel())},")
    rows.append("b/0.png," + "," * 9 + ",3")  # face 3 not found: skipped under its own name
    (tmp_path / "lm.csv").write_text("\n".join(rows) + "\n")
    assert sorted(read_face_landmarks(tmp_path / "lm.csv")) == [("a/0.png", 0), ("a/0.png", 1),
                                                               ("b/0.png", 0), ("b/0.png", 3)]
    assert sorted(read_landmarks(tmp_path / "lm.csv")) == ["a/0.png", "a/0_face1.png", "b/0.png",
                                                          "b/0_face3.png"]
    summary = align_folder(src, out, tmp_path / "lm.csv", workers=1)
    assert summary == {"aligned": 3, "skipped": 1, "size": 112}
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert crops == ["a/0.png", "a/0_face1.png", "b/0.png"]
    x, y = ARCFACE_112[0]
    for crop in crops:  # each painted left eye landed on the template
        assert cv2.imread(str(out / crop))[int(round(y)), int(round(x))].mean() > 150
    skipped = (out / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[1].startswith("b/0_face3.png,")
    assert "(face 3)" in skipped[1]


def test_two_faces_on_one_output_name_is_an_error(tmp_path):
    _photo(tmp_path / "src" / "a.png", ARCFACE_112)
    _photo(tmp_path / "src" / "a_face1.png", ARCFACE_112)
    pts = ",".join(f"{v:.3f}" for v in ARCFACE_112.ravel())
    rows = [",".join(FACE_HEADER), f"a.png,{pts},0", f"a.png,{pts},1", f"a_face1.png,{pts},0"]
    (tmp_path / "lm.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(FacelabError, match=r"would both be written to 'a_face1.png'"):
        align_folder(tmp_path / "src", tmp_path / "out", tmp_path / "lm.csv", workers=1)
    assert not (tmp_path / "out" / "a.png").exists()


def test_all_faces_needs_the_detector(tmp_path, capsys):
    _photo(tmp_path / "src" / "a" / "0.png", ARCFACE_112)
    _landmarks_csv(tmp_path / "lm.csv", ["a/0.png"], ARCFACE_112)
    from facelab.cli import main

    argv = ["align", str(tmp_path / "src"), str(tmp_path / "out"), "--landmarks",
            str(tmp_path / "lm.csv"), "--all-faces"]
    assert main(argv) == 2
    assert "--all-faces needs --detector" in capsys.readouterr().err
