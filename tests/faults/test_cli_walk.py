"""Every sub-command of the CLI, given bad input, answers with one line `facelab: error: ...` naming what
is wrong and exits 2: no traceback, and no work done first. The list of commands is read from the parser,
so a new command without a case here fails the test."""

import argparse
import time

import numpy as np
import pytest
import yaml

from facelab.cli import build_parser, main


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every runnable command path of the parser, e.g. ("train",), ("experiment", "heads")."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= commands(sub, (*prefix, name)) or {(*prefix, name)}
    return found


@pytest.fixture
def where(tmp_path):
    """Paths for bad input: `file` is a regular file, so anything under it cannot be created."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    recipe = {"output": str(tmp_path / "run"), "data": {"train": str(tmp_path / "empty")},
              "model": {"backbone": "tiny", "embedding_size": 8}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path


def cases(t) -> dict[tuple[str, ...], list[tuple[list[str], str]]]:
    """{command: [(argv, text the error must contain)]}: at least one bad input per command."""
    nowhere, blocked = str(t / "missing"), str(t / "file" / "out")
    return {
        ("synth",): [(["synth", str(t / "s"), "--identities", "0"], "identities must be an integer >= 1"),
                     (["synth", blocked], "file/out")],
        ("align",): [(["align", nowhere, str(t / "a"), "--landmarks", nowhere], "missing"),
                     (["align", str(t / "empty"), blocked, "--landmarks", nowhere], "file/out")],
        ("convert",): [(["convert", nowhere, str(t / "c")], "missing"),
                       (["convert", str(t / "empty"), str(t / "c")], "empty")],
        ("train",): [(["train", str(t / "r.yaml"), "optim.lr=-0.1"], "optim.lr: -0.1 is invalid"),
                     (["train", str(t / "r.yaml"), "data.batch_size=0"], "data.batch_size: 0 is invalid"),
                     (["train", str(t / "r.yaml"), "train.steps=0"], "train.steps: 0 is invalid"),
                     (["train", str(t / "r.yaml"), "optim.name=sgdd"], "optim.name: 'sgdd' is invalid"),
                     (["train", str(t / "r.yaml"), "schedule.name=cosinus"], "schedule.name"),
                     (["train", str(t / "r.yaml"), "train.amp=fp8"], "train.amp: 'fp8' is invalid"),
                     (["train", str(t / "r.yaml"), "train.log_every=0"], "train.log_every: 0 is invalid"),
                     (["train", str(t / "r.yaml"), f"output={blocked}"], "file/out"),
                     (["train", "--resume", nowhere], "not a run folder"),
                     (["train", str(t / "r.yaml")], "empty")],
        ("eval",): [(["eval", nowhere, "--pairs", nowhere], "missing"),
                    (["eval", nowhere], "give --pairs")],
        ("ijb",): [(["ijb", nowhere, nowhere], "missing")],
        ("search",): [(["search", nowhere, "--gallery", nowhere, "--probes", nowhere], "missing")],
        ("clean",): [(["clean", nowhere, "--data", nowhere, "--out", str(t / "o")], "missing")],
        ("overlap",): [(["overlap", nowhere, nowhere, "--model", nowhere, "--out", str(t / "o")], "missing")],
        ("export",): [(["export", nowhere, "--out", str(t / "m.onnx")], "missing")],
        ("demo",): [(["demo", "--out", blocked, "--data", str(t / "d")], "file/out")],
        ("embed",): [(["embed", nowhere, str(t / "file"), "--out", str(t / "f.npz")], "missing"),
                     (["embed", nowhere, nowhere, "--out", str(t / "f.npz")], "missing"),
                     (["embed", nowhere, str(t / "empty"), "--out", str(t / "f.npz")], "no photos"),
                     (["embed", nowhere, str(t / "file"), "--out", str(t / "f.txt")], ".npz"),
                     (["embed", nowhere, str(t / "file"), "--out", blocked + ".npz"],
                      "file: output folder is not writable")],
        ("verify",): [(["verify", nowhere, nowhere, nowhere], "missing: no such photo"),
                      (["verify", nowhere, str(t / "file"), str(t / "file")], "missing")],
        ("gallery", "add"): [(["gallery", "--gallery", str(t / "g"), "--model", nowhere, "add", "x",
                               str(t / "file")], "missing"),
                             (["gallery", "--gallery", str(t / "g"), "add", "x", str(t / "file")],
                              "give --model")],
        ("gallery", "identify"): [(["gallery", "--gallery", str(t / "g"), "--model", nowhere,
                                    "identify", str(t / "file")], "missing")],
        ("gallery", "list"): [(["gallery", "--gallery", nowhere, "list"], "no gallery there"),
                              (["gallery", "--gallery", str(t / "file"), "list"], "not a gallery")],
        ("gallery", "remove"): [(["gallery", "--gallery", nowhere, "remove", "x"], "no gallery there")],
        ("serve",): [(["serve", nowhere, "--gallery", str(t / "g")], "missing: no checkpoint"),
                     (["serve", nowhere, "--gallery", blocked], "file/out"),
                     (["serve", nowhere, "--gallery", str(t / "g"), "--port", "70000"], "--port"),
                     (["serve", nowhere, "--gallery", str(t / "g"), "--max-upload-mb", "0"],
                      "--max-upload-mb"),
                     (["serve", nowhere, "--gallery", str(t / "g"), "--api-key", " "],
                      "--api-key")],
        ("import", "dlib"): [(["import", "dlib", nowhere, "--out", str(t / "d")], "missing")],
        ("import", "insightface"): [(["import", "insightface", nowhere, "--arch", "r50", "--out",
                                      str(t / "r")], "missing"),
                                     (["import", "insightface", nowhere, "--arch", "r51", "--out",
                                       str(t / "r")], "r51")],
        ("import", "onnx"): [(["import", "onnx", nowhere, "--out", str(t / "x.onnx"), "--preset",
                               "insightface"], "missing"),
                              (["import", "onnx", nowhere, "--out", str(t / "x.onnx")], "--preset")],
        ("experiment", "heads"): [(["experiment", "heads", "--steps", "0", "--data", str(t / "h")],
                                   "train.steps: 0 is invalid")],
        ("experiment", "ddl"): [(["experiment", "ddl", "--batch-size", "0", "--data", str(t / "h")],
                                 "data.batch_size: 0 is invalid")],
        ("experiment", "dail"): [(["experiment", "dail", "--steps", "-2", "--data", str(t / "h")],
                                  "train.steps: -2 is invalid")],
        ("experiment", "pairs"): [(["experiment", "pairs", "--seeds", "-1", "--data", str(t / "h")],
                                   "seed: -1 is invalid")],
        ("experiment", "claims"): [(["experiment", "claims", "--only", "nope", "--data", str(t / "h")],
                                    "unknown claim 'nope'"),
                                   (["experiment", "claims", "--scale", "0", "--data", str(t / "h")],
                                    "--scale > 0")],
    }


def test_every_command_has_a_case(where):
    assert set(cases(where)) == commands(build_parser())


def test_every_bad_input_gives_one_line_and_exit_2_before_any_work(where, capsys):
    for runs in cases(where).values():
        for argv, text in runs:
            started = time.perf_counter()
            assert main(argv) == 2, argv
            seconds = time.perf_counter() - started
            out = capsys.readouterr()
            lines = out.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("facelab: error:"), (argv, out.err)
            assert text in lines[0], (argv, lines[0])
            assert seconds < 20, f"{argv}: failed only after {seconds:.0f} s of work"
    assert not (where / "h").exists() and not (where / "d").exists()  # no experiment/demo data was made


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["train", "--no-such-flag"], ["eval"],
                                  ["experiment"], ["experiment", "heads", "--steps", "x"], ["nope"]])
def test_argparse_mistakes_are_one_line_too(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facelab: error: facelab"), lines


def test_zero_byte_image_in_training_is_one_line(where, capsys):
    import cv2

    folder = where / "train"
    for c in range(2):
        (folder / f"id{c}").mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(folder / f"id{c}" / f"{k}.png"), np.full((112, 112, 3), 60 * c + k, np.uint8))
    (folder / "id1" / "zero.jpg").write_bytes(b"")
    assert main(["train", str(where / "r.yaml"), f"data.train={folder}", "data.batch_size=2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "zero.jpg" in lines[0], lines
