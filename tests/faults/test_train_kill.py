"""kill -9 of a real `facelab train` mid-run: `--resume RUN_DIR` completes it with the weights and
log of the uninterrupted run (same machine, threads and batches: the same computation, so
bit-exact), taking over the dead process's lock, and nothing half-written is passed off as complete
meanwhile. The killed run is a process of its own; the uninterrupted run and the resume run in this
one (through the CLI's main), which spares two torch imports."""

import json
import logging
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import torch
import yaml

from facelab.cli import main
from facelab.model import load_checkpoint
from facelab.train.run import LOCK_NAME

# long enough that the run still goes 0.3 s after its first checkpoint (~17 ms a step on 2 loaded
# cores; 5 ms would still leave 30 steps)
STEPS = 90


def _data(root):
    rng = np.random.default_rng(1)
    for c in range(4):
        base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112))
        (root / f"id{c}").mkdir(parents=True)
        for k in range(4):
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{c}" / f"{k}.png"), noisy)
    return root


def _recipe(tmp_path, train_dir, out):
    d = {
        "output": str(out),
        "data": {"train": str(train_dir), "batch_size": 8, "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 16, "kwargs": {"width": 4}},
        "head": {"margin": "arcface", "kwargs": {"s": 16.0, "m": 0.3}},
        "optim": {"lr": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"steps": STEPS, "log_every": 1, "checkpoint_every": 3, "progress": True,
                  "status_every": 0.1,
                  "tensorboard": False, "threads": 1},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def test_kill_9_mid_training_then_resume_gives_the_uninterrupted_run(tmp_path, caplog):
    train_dir = _data(tmp_path / "train")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", _recipe(tmp_path, train_dir, full)]) == 0  # uninterrupted: this process

    proc = subprocess.Popen([sys.executable, "-m", "facelab", "train", _recipe(tmp_path, train_dir, cut)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (cut / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the run, past a few more checkpoint writes
    assert proc.poll() is None, "the run ended before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # what the killed run left: a loadable checkpoint of a step it reached, no summary, a stale lock
    assert (cut / LOCK_NAME).exists() and not (cut / "metrics.json").exists()
    killed_at = load_checkpoint(cut)["step"]
    assert 3 <= killed_at < STEPS and killed_at % 3 == 0
    status = [ln for ln in proc.stderr.read().splitlines() if "step " in ln and "ETA" in ln]
    assert status, "no status line reached the redirected stderr"

    with caplog.at_level(logging.INFO):  # the resume in this process, as the uninterrupted run
        assert main(["train", "--resume", str(cut)]) == 0
    assert "taking over the lock" in caplog.text
    assert f"resumed {cut} at step {killed_at}" in caplog.text
    a, b = load_checkpoint(full), load_checkpoint(cut)
    assert a["step"] == b["step"] == STEPS
    for part in ("model", "head"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    log_full, log_cut = ((run / "log.jsonl").read_text().splitlines() for run in (full, cut))
    assert [json.loads(x) for x in log_cut] == [json.loads(x) for x in log_full]
    assert json.loads((cut / "metrics.json").read_text())["train"]["steps"] == STEPS
    assert not (cut / LOCK_NAME).exists()
    assert not list(cut.glob("*.tmp")) and not list(cut.glob(".*.tmp"))  # a dead writer's temporaries went
