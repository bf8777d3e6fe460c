"""The README's three lines of Python run on real photographs and print a decision."""

import re
from pathlib import Path

import pytest
from tests.references import photos

from facelab.align.mtcnn import weights_dir
from facelab.errors import FacelabError
from facelab.io import encode_image

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text.split("## Recognise faces in photos", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_three_lines_print_a_decision(tmp_path, monkeypatch, capsys):
    try:
        weights_dir()
    except FacelabError:
        pytest.skip("MTCNN weights not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    pytest.importorskip("skimage")
    code = _snippet()
    assert len(code.strip().splitlines()) == 3 and 'Recognizer.load("runs/demo")' in code
    # the demo run's place, with a small model standing in for it and two real photographs
    photos.model_run(tmp_path / "runs/demo", {"synth-lfw": {"accuracy": {"threshold": 1.2}}})
    (tmp_path / "a.jpg").write_bytes(encode_image(photos.astronaut()))
    (tmp_path / "b.jpg").write_bytes(encode_image(photos.hopper()))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"(same person|different people): cosine -?\d\.\d{4}, distance \d\.\d{4} "
                        r"(<|>=) threshold 1\.2000 \(best accuracy on synth-lfw\)", out), out
