"""A training run's folder never lies: failed resumes change nothing, a resume keeps the run's own
configuration (only facelab.train.run.RESUMABLE keys may change, recorded with their step), one writer at
a time, a finished run is left alone, and records are strict JSON."""

import json
import logging
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from facelab.cli import main
from facelab.config import config_from_dict
from facelab.data.pairsets import write_bin
from facelab.errors import FacelabError
from facelab.model import load_checkpoint
from facelab.train.loop import train
from facelab.train.run import LOCK_NAME, RunLock


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 identities x 4 PNG images (a smooth colour field each, plus noise) and a 20-pair val.bin."""
    root = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    bases = [cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112)) for _ in range(6)]

    def image(c):
        return np.clip(bases[c] + rng.normal(0, 12, bases[c].shape), 0, 255).astype(np.uint8)

    for c in range(4):
        (root / "train" / f"id{c}").mkdir(parents=True)
        for k in range(4):
            cv2.imwrite(str(root / "train" / f"id{c}" / f"{k}.png"), image(c))
    pairs = [(image(4), image(4 + i % 2)) for i in range(20)]
    write_bin(root / "val.bin", [x for p in pairs for x in p], [i % 2 == 0 for i in range(20)])
    return root


def recipe(data, out, steps=4, **train_keys) -> dict:
    return {
        "output": str(out),
        "data": {"train": str(data / "train"), "val_pairs": [str(data / "val.bin")], "batch_size": 8,
                 "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 16, "kwargs": {"width": 4}},
        "head": {"margin": "arcface", "kwargs": {"s": 16.0, "m": 0.3}},
        "optim": {"lr": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "train": {"steps": steps, "log_every": 1, "checkpoint_every": 2, "progress": False,
                  "tensorboard": False, "threads": 1, **train_keys},
    }


def write_recipe(path, d) -> str:
    path.write_text(yaml.safe_dump(d))
    return str(path)


def snapshot(folder) -> dict:
    """{relative path: (bytes, mtime_ns)} of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run made with overrides on the command line (steps 4)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = write_recipe(out.parent / "r.yaml", recipe(data, "runs/elsewhere"))
    assert main(["train", cfg, f"output={out}", "head.kwargs.m=0.4"]) == 0
    return out


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("overrides", [["data.train=/no/such/folder"], ["head.margin=cosface"],
                                       ["optim.lr=0.5"], ["train.steps=2"], ["model.backbone=iresnet18"],
                                       ["data.val_pairs=[/no/such.bin]", "train.steps=6"]])
def test_a_refused_or_failing_resume_changes_nothing(finished, tmp_path, capsys, overrides):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    assert main(["train", "--resume", str(run), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("facelab: error:") and "\n" not in err
    key, value = overrides[0].split("=")
    assert key in err or value.strip("[]") in err, err  # names what is wrong
    assert snapshot(run) == before  # not a byte, not a timestamp


def test_a_refused_resume_names_the_key_and_both_values(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    assert main(["train", "--resume", str(run), "train.steps=6", "head.margin=cosface"]) == 2
    err = capsys.readouterr().err
    assert "head.margin was 'arcface'" in err and "'cosface'" in err and "train.steps" in err


def test_resume_run_dir_uses_the_runs_own_config_and_records_more_steps(finished, tmp_path, caplog):
    """A run made with overrides resumes from its folder alone; more steps continue it, and config.yaml,
    the checkpoint and metrics.json say from which step the new value ran."""
    run = copy_run(finished, tmp_path / "run")
    assert main(["train", "--resume", str(run), "train.steps=6"]) == 0
    text = (run / "config.yaml").read_text()
    assert "# step 4: train.steps changed from 4 to 6 on resume" in text
    stored = yaml.safe_load(text)
    assert stored["train"]["steps"] == 6 and stored["head"]["kwargs"]["m"] == 0.4  # the run's override kept
    assert stored["output"] == str(run)
    change = {"step": 4, "key": "train.steps", "from": 4, "to": 6}
    assert load_checkpoint(run)["config_changes"] == [change] and load_checkpoint(run)["step"] == 6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["config_changes"] == [change] and metrics["train"]["steps"] == 6
    # and a later resume keeps the history
    assert main(["train", "--resume", str(run), "train.steps=8", "train.log_every=2"]) == 0
    changes = load_checkpoint(run)["config_changes"]
    assert [c["key"] for c in changes] == ["train.steps", "train.log_every", "train.steps"]
    assert [c["step"] for c in changes] == [4, 6, 6]


def test_resuming_a_finished_run_says_so_and_touches_nothing(finished, tmp_path, caplog):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    with caplog.at_level(logging.INFO):
        assert main(["train", "--resume", str(run)]) == 0
    assert "finished at step 4 already" in caplog.text
    assert snapshot(run) == before


def test_more_steps_give_the_uninterrupted_longer_run_up_to_the_schedule(data, tmp_path):
    """Extending steps changes the schedule from the resume on (cosine over the new total): recorded,
    and the steps before the resume are those of the short run (same path: bit-exact on one machine)."""
    short = train(config_from_dict(recipe(data, tmp_path / "a", steps=4)))
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    cfg = config_from_dict(recipe(data, tmp_path / "a", steps=6))
    longer = train(cfg, resume=True)
    log_b = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    losses = [r for r in log_b if "loss/loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert [r for r in log_b if r["step"] <= 4 and "loss/loss" in r] == [r for r in log_a if "loss/loss" in r]
    assert short["train"]["steps"] == 4 and longer["train"]["steps"] == 6


def test_a_resume_with_the_recipe_also_refuses_changes(data, tmp_path):
    d = recipe(data, tmp_path / "r", steps=4)
    train(config_from_dict(d), stop_at=2)
    d["optim"]["momentum"] = 0.5
    with pytest.raises(FacelabError, match=r"optim.momentum was 0.9 in this run, resume asks for 0.5"):
        train(config_from_dict(d), resume=True)


def test_second_writer_is_refused_naming_the_holder(data, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-12-03T10:00:00"}
        (out / LOCK_NAME).write_text(json.dumps(lock))
        with pytest.raises(FacelabError, match=rf"another facelab process writes this run folder \(pid {holder.pid}"):
            train(config_from_dict(recipe(data, out)))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere-" + socket.gethostname()}))
    with pytest.raises(FacelabError, match="elsewhere-"):
        RunLock(tmp_path).acquire()


def test_a_stale_lock_is_taken_over_with_a_warning(data, tmp_path, caplog):
    out = tmp_path / "r"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free now
    (out / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING):
        train(config_from_dict(recipe(data, out, steps=2)))
    assert "taking over the lock" in caplog.text and f"pid {gone.pid}" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_recycled_pid_does_not_keep_a_stale_lock(tmp_path):
    """The lock records the holder's process start: a live process with the same pid started later is
    not the holder."""
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": "1"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    RunLock(tmp_path).acquire().release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_two_trainings_into_one_folder_one_is_refused(data, tmp_path, capsys):
    """Two `facelab train` processes: while a real one holds the folder, the second (this process,
    through the CLI's main: no second torch import) is refused with one line naming the holder."""
    d = recipe(data, tmp_path / "run", steps=10**6, checkpoint_every=10**6)
    cfg = write_recipe(tmp_path / "r.yaml", d)
    cmd = [sys.executable, "-m", "facelab", "train", cfg]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait until it holds the lock (torch import takes seconds)
            if (tmp_path / "run" / LOCK_NAME).exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert first.poll() is None, first.stderr.read()
        capsys.readouterr()
        assert main(["train", cfg]) == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and err.count("\n") == 1, err
    finally:
        first.kill()
        first.wait()


def test_metrics_are_strict_json_and_bad_values_are_refused_at_load(data, tmp_path):
    train(config_from_dict(recipe(data, tmp_path / "r", steps=2)))

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text(), parse_constant=no_constants)
    assert metrics["train"]["images_per_second"] > 0
    for steps in (0, -3):
        with pytest.raises(FacelabError, match=rf"config train.steps: {steps} is invalid: must be >= 1"):
            config_from_dict(recipe(data, tmp_path / "x", steps=steps))


def test_unwritable_run_folder_fails_before_the_data_is_read(data, tmp_path, capsys, monkeypatch):
    import facelab.train.loop as loop

    def never(*a, **k):
        raise AssertionError("the data was opened before the run folder was checked")

    monkeypatch.setattr(loop, "open_training_data", never)
    (tmp_path / "file").write_text("x")
    cfg = write_recipe(tmp_path / "r.yaml", recipe(data, tmp_path / "file" / "run"))
    assert main(["train", cfg]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"facelab: error: {tmp_path / 'file' / 'run'}: run folder is not writable")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("override", "key"), [
    ("head.margin=arcfce", "unknown margin 'arcfce'"),
    ("model.backbone=resnet", "unknown backbone 'resnet'"),
    ("head.kwargs.mm=0.1", "unknown parameter 'mm'"),
    ("pairs.loss=tripplet", "pairs.loss"),
])
def test_registry_names_fail_before_any_work(data, tmp_path, capsys, override, key):
    cfg = write_recipe(tmp_path / "r.yaml", recipe(data, tmp_path / "run"))
    extra = ["objective=head+pairs"] if override.startswith("pairs") else []
    assert main(["train", cfg, override, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facelab: error: config") and key in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_status_lines_when_stderr_is_not_a_terminal(data, tmp_path, caplog):
    d = recipe(data, tmp_path / "r", steps=3, progress=True, status_every=1e-9)
    with caplog.at_level(logging.INFO, logger="facelab.train.progress"):
        train(config_from_dict(d))
    lines = [r.getMessage() for r in caplog.records if r.name == "facelab.train.progress"]
    assert len(lines) >= 3, lines
    assert "step 1/3 (33%)" in lines[0] and "images/s" in lines[0] and "ETA" in lines[0]
    assert "step 3/3 (100%), loss " in lines[-1]


def _corrupt_jpeg(path, rng):
    """A JPEG with 64 zeroed bytes at 30% of its data: libjpeg repairs it with a warning naming no
    file, and cv2/Pillow decode it silently."""
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    data = bytearray(buf.tobytes())
    at = int(0.3 * len(data))
    data[at:at + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_bad_images_are_refused_by_name_or_skipped_and_listed(data, tmp_path):
    import shutil

    train_dir = tmp_path / "train"
    shutil.copytree(data / "train", train_dir)
    (train_dir / "id1" / "zero.jpg").write_bytes(b"")
    _corrupt_jpeg(train_dir / "id2" / "zeroed.jpg", np.random.default_rng(3))
    d = recipe(data, tmp_path / "r", steps=2)
    d["data"]["train"] = str(train_dir)
    with pytest.raises(FacelabError, match=r"2 bad images.*zero.jpg.*zeroed.jpg.*data.skip_bad: true") as e:
        train(config_from_dict(d))
    assert "empty file" in str(e.value) and "damaged JPEG data" in str(e.value)
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before anything was written
    d["data"]["skip_bad"] = True
    summary = train(config_from_dict(d))
    rows = (tmp_path / "r" / "bad_images.csv").read_text().splitlines()
    assert rows[0] == "image,reason" and len(rows) == 3
    assert {r.split(",")[0].rsplit("/", 1)[-1] for r in rows[1:]} == {"zero.jpg", "zeroed.jpg"}
    assert summary["train"]["num_images"] == 16 and summary["train"]["bad_images_skipped"] == 2
