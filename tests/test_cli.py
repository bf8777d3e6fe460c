"""The command line: bad input gives one error line and exit 2; the sub-commands run end to end."""

import json
import subprocess
import sys

import cv2
import numpy as np

import facelab.eval.run
from facelab.cli import main
from facelab.data.pairsets import write_bin


def _folder(root, ids=4, per=3):
    rng = np.random.default_rng(0)
    for c in range(ids):
        base = cv2.resize(rng.uniform(0, 255, (3, 3, 3)), (112, 112))
        for k in range(per):
            p = root / f"{c}" / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))


def _recipe(tmp_path):
    _folder(tmp_path / "train")
    rng = np.random.default_rng(1)
    write_bin(tmp_path / "v.bin", list(rng.integers(0, 255, (40, 112, 112, 3), dtype=np.uint8)), [True, False] * 10)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(
        f"output: {tmp_path / 'run'}\n"
        f"data: {{train: {tmp_path / 'train'}, batch_size: 4, workers: 0, val_pairs: [{tmp_path / 'v.bin'}]}}\n"
        "model: {backbone: tiny, embedding_size: 8}\n"
        "head: {margin: cosface, kwargs: {s: 8.0}}\n"
        "train: {steps: 2, progress: false, tensorboard: false}\n"
    )
    return cfg


def test_train_then_eval(tmp_path, capsys, monkeypatch):
    cfg = _recipe(tmp_path)
    assert main(["train", str(cfg)]) == 0
    assert "| v |" in capsys.readouterr().out
    passes, embed_images = [], facelab.eval.run.embed_images  # (flip argument, embeddings) of each eval pass

    def spy(*args, **kwargs):
        passes.append((kwargs["flip"], embed_images(*args, **kwargs)))
        return passes[-1][1]

    monkeypatch.setattr(facelab.eval.run, "embed_images", spy)
    assert main(["eval", str(tmp_path / "run"), "--pairs", str(tmp_path / "v.bin"), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["pairs"]["v"]["pairs"] == 20 and (tmp_path / "ev" / "roc.png").exists()
    # --no-flip: the accuracy comes from the unflipped embeddings alone, and metrics.json says so (the accuracies
    # may coincide on so small a set, so the recorded convention is what is checked)
    argv = ["eval", str(tmp_path / "run"), "--pairs", str(tmp_path / "v.bin"), "--no-flip",
            "--out", str(tmp_path / "nf")]
    assert main(argv) == 0
    no_flip = json.loads((tmp_path / "nf" / "metrics.json").read_text())
    assert [f for f, _ in passes] == [True, False] and metrics["flip"] is True and no_flip["flip"] is False
    assert not np.allclose(passes[0][1], passes[1][1])  # two different sets of embeddings were scored
    assert no_flip["pairs"]["v"]["pairs"] == 20
    # LFW pairs.txt (10 sets of 1 same + 1 different pair) over an aligned folder, with the non-default
    # conventions recorded in metrics.json
    rng = np.random.default_rng(3)
    for i in range(11):
        for k in (1, 2):
            p = tmp_path / "lfw" / f"p{i}" / f"p{i}_{k:04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    lines = ["10\t1"]
    for i in range(10):
        lines += [f"p{i}\t1\t2", f"p{i}\t1\tp{i + 1}\t2"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    argv = ["eval", str(tmp_path / "run"), "--lfw", str(tmp_path / "pairs.txt"), str(tmp_path / "lfw"),
            "--pairs", str(tmp_path / "v.bin"), "--threshold-rule", "exact", "--spread", "sem",
            "--out", str(tmp_path / "ev2")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert set(metrics["pairs"]) == {"pairs", "v"} and metrics["pairs"]["pairs"]["pairs"] == 20
    convention = metrics["pairs"]["v"]["convention"]
    assert "exact" in json.dumps(convention) and "sem" in json.dumps(convention)
    # the run exists: training again without --resume is refused, with --resume at the end it is a no-op
    assert main(["train", str(cfg)]) == 2
    assert "holds a run already" in capsys.readouterr().err


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    cfg = _recipe(tmp_path)
    cases = [
        (["train", str(cfg), "train.stepz=3"], "unknown key 'train.stepz'"),
        (["train", str(tmp_path / "nope.yaml")], "nope.yaml"),
        (["train", "no-such-recipe"], "no such config file or shipped recipe"),
        (["train", str(cfg), "head.margin=arcfase"], "arcfase"),
        (["eval", str(tmp_path), "--pairs", str(tmp_path / "v.bin")], "no checkpoint found"),
        (["align", str(tmp_path / "train"), str(tmp_path / "al"), "--landmarks", str(cfg)], "header must be"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("facelab: error:") and msg in err[0], (argv, err)


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "facelab", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("synth", "align", "train", "eval", "demo"):
        assert cmd in out.stdout


def test_parser_imports_no_training_code():
    """Building the parser (`facelab --help`) lists the experiments from their registry: neither
    their modules, nor the training loop, torch or pytorch-metric-learning are imported."""
    code = ("import sys; from facelab.cli import build_parser; build_parser(); "
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
            "('facelab', 'torch', 'pytorch_metric_learning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == {"facelab", "facelab.cli", "facelab.errors", "facelab.experiments"}


def test_convert_then_train_on_recordio(tmp_path, capsys):
    cfg = _recipe(tmp_path)
    assert main(["convert", str(tmp_path / "train"), str(tmp_path / "rec"), "--to", "rec"]) == 0
    assert (tmp_path / "rec" / "train.rec").exists() and (tmp_path / "rec" / "property").exists()
    out = tmp_path / "recrun"
    assert main(["train", str(cfg), f"data.train={tmp_path / 'rec'}", f"output={out}", "train.steps=1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["train"]["num_classes"] == 4
    assert main(["convert", str(tmp_path / "train"), str(tmp_path / "rec")]) == 2  # never overwrites
    assert "rec" in capsys.readouterr().err


def test_heads_with_classifier_needs_train_from_a_config(tmp_path, capsys):
    """One config line switches the head; sub-centres, AdaCos' class count, AdaM's per-class margins and
    softmax's bias come from the head builder (every head's training is covered in tests/heads)."""
    cfg = _recipe(tmp_path)
    for name in ("subcenter_arcface", "adacos", "adam_softmax", "softmax"):
        out = tmp_path / f"run-{name}"
        assert main(["train", str(cfg), f"head.margin={name}", "head.kwargs={}", f"output={out}"]) == 0, name
    ckpt = __import__("torch").load(tmp_path / "run-subcenter_arcface" / "checkpoint.pt", weights_only=True)
    assert ckpt["head"]["classifier.weight"].shape[0] == 4 * 3  # 4 classes × K=3 sub-centres
    assert main(["train", str(cfg), "head.margin=adacos", "head.kwargs={num_classes: 9}", f"output={tmp_path}/x"]) == 2
    assert "head.kwargs.num_classes" in capsys.readouterr().err


def test_ijb_command_on_fixture(tmp_path, capsys):
    from tests.references.ijb_fixture import write_ijb_fixture

    cfg = _recipe(tmp_path)
    assert main(["train", str(cfg)]) == 0
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (24, 112, 112, 3), dtype=np.uint8)
    write_ijb_fixture(tmp_path / "ijb", images, [i // 4 for i in range(24)])
    capsys.readouterr()
    assert main(["ijb", str(tmp_path / "run"), str(tmp_path / "ijb"), "--workers", "0"]) == 0
    assert "1e-" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "ijb" / "metrics.json").read_text())
    assert metrics and (tmp_path / "run" / "ijb" / "features.npz").exists()


def test_search_command(tmp_path, capsys):
    cfg = _recipe(tmp_path)
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    argv = ["search", str(tmp_path / "run"), "--gallery", str(tmp_path / "train"), "--probes", str(tmp_path / "train"),
            "--k", "3"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "search" / "metrics.json").read_text())
    assert metrics and (tmp_path / "run" / "search" / "candidates.json").exists()
    assert main(argv[:3] + [str(tmp_path / "nope")] + argv[4:]) == 2
