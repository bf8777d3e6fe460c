"""Commands check their output folder before any work: an unwritable one gives one error line and
exit 2, and neither the model nor the data is loaded (the loaders here fail the test if called)."""

import pytest

import facelab.eval.embed
import facelab.eval.run
import facelab.model
from facelab.cli import main


def _must_not_run(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was called before the output folder was checked")

    return fail


@pytest.fixture
def no_work(monkeypatch):
    """Model loading, data loading and embedding all fail the test if reached."""
    for module, name in [
        (facelab.model, "load_model"),
        (facelab.eval.run, "load_model"),
        (facelab.eval.run, "load_pair_sets"),
        (facelab.eval.run, "embed_images"),
        (facelab.eval.embed, "embed_images"),
    ]:
        monkeypatch.setattr(module, name, _must_not_run(f"{module.__name__}.{name}"))


@pytest.fixture
def setup(tmp_path):
    """(a checkpoint file, an output folder that cannot be made: its parent is a regular file)."""
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not read")
    (tmp_path / "afile").write_text("a regular file")
    return ckpt, tmp_path / "afile" / "out"


def _commands(tmp_path, ckpt, out):
    g, p = str(tmp_path / "g"), str(tmp_path / "p")
    return {
        "eval": ["eval", str(ckpt), "--pairs", str(tmp_path / "v.bin"), "--out", str(out)],
        "ijb": ["ijb", str(ckpt), str(tmp_path / "ijb"), "--out", str(out), "--workers", "0"],
        "search": ["search", str(ckpt), "--gallery", g, "--probes", p, "--out", str(out)],
        "overlap": ["overlap", g, p, "--model", str(ckpt), "--out", str(out)],
    }


def _one_error_line(capsys, *names):
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("facelab: error:"), err
    assert all(str(n) in err[0] for n in names), (err, names)
    assert captured.out == ""
    return err[0]


@pytest.mark.parametrize("command", ["eval", "ijb", "search", "overlap"])
def test_unwritable_output_folder_fails_before_any_work(command, tmp_path, setup, no_work, capsys):
    ckpt, out = setup
    assert main(_commands(tmp_path, ckpt, out)[command]) == 2
    assert "not writable" in _one_error_line(capsys, out)
    assert not (tmp_path / "afile").is_dir()


def test_overlap_refuses_an_existing_merge_folder_first(tmp_path, setup, no_work, capsys):
    ckpt, _ = setup
    (tmp_path / "merged").mkdir()
    argv = _commands(tmp_path, ckpt, tmp_path / "out")["overlap"]
    assert main([*argv, "--merge", str(tmp_path / "merged")]) == 2
    _one_error_line(capsys, f"{tmp_path / 'merged'}: exists")
    assert not (tmp_path / "out").exists()  # the probe leaves no empty folder


def test_default_output_folder_is_checked_too(tmp_path, setup, no_work, capsys):
    """eval's default folder, <run>/eval, blocked by a file of that name."""
    ckpt, _ = setup
    (ckpt.parent / "eval").write_text("in the way")
    assert main(["eval", str(ckpt.parent), "--pairs", str(tmp_path / "v.bin")]) == 2
    _one_error_line(capsys, ckpt.parent / "eval")
