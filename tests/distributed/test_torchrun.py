"""The real multi-process entry point, `torchrun --nproc_per_node 2 -m facelab train RECIPE key=value`, trains like
one process: torchrun's environment (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT) sets up gloo in
facelab.distributed.env, both ranks run the mid-run verification (train.eval_every) and the checkpoints, and the
run ends with exit status 0, the full classifier in the checkpoint, weights equal to the one-process run's to
float32 rounding, the same verification accuracy mid-run and at the end, and a log written by rank 0 alone."""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml
from tests.references.distributed_runs import accuracies_near, cfg_dict, same_run, val_distances

from facelab.config import load_config
from facelab.model import load_checkpoint
from facelab.train.loop import train

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_recipe(root, path):
    """cfg_dict's tiny recipe (6 classes, embedding 16, arcface s=16 m=0.3, batch 8, 1 thread) with verification
    and a checkpoint mid-run as well: train.eval_every 2 and train.checkpoint_every 2 of 4 steps."""
    d = cfg_dict(root, path.parent / "unused")  # output: given on the command line (a dotted override)
    d["train"].update(steps=4, eval_every=2, checkpoint_every=2)
    path.write_text(yaml.safe_dump(d))
    return path


def torchrun(tmp_path, *args):
    """`torchrun --nproc_per_node 2 -m facelab *args` in a subprocess, as a user would start it."""
    scratch = tmp_path / "cache"  # the Makefile's scratch caches: nothing written to $HOME
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": str(scratch / "mpl"),
           "XDG_CACHE_HOME": str(scratch / "xdg")}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # torchrun sets its own
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "facelab", *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def val_accuracy(rows, step):
    found = [r["val/val/accuracy"] for r in rows if r["step"] == step and "val/val/accuracy" in r]
    assert len(found) == 1, f"one verification entry at step {step}: {rows}"
    return found[0]


def test_torchrun_trains_like_one_process(tiny_data, tmp_path):
    recipe = write_recipe(tiny_data, tmp_path / "recipe.yaml")
    done = torchrun(tmp_path, "train", str(recipe), f"output={tmp_path / 'two'}")
    assert done.returncode == 0, f"torchrun exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    assert done.stdout.count("| val |") == 1  # the results table, printed by rank 0 only

    one = train(load_config(recipe, [f"output={tmp_path / 'one'}"]))  # the same recipe in this process

    two_ckpt = load_checkpoint(tmp_path / "two")
    assert two_ckpt["step"] == load_checkpoint(tmp_path / "one")["step"] == 4
    assert two_ckpt["head"]["classifier.weight"].shape == (6, 16)  # the full classifier, gathered from both ranks
    same_run(tmp_path / "one", tmp_path / "two")  # weights, classifier and its optimiser rows to float32 rounding
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4

    rows_one, rows_two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert val_accuracy(rows_two, 4) == metrics["pairs"]["val"]["accuracy"]  # a run: log, summary
    assert val_accuracy(rows_one, 4) == one["pairs"]["val"]["accuracy"]
    # the verification (mid-run, on both ranks, and at the end; sharded) gives the one-process
    # accuracy up to float32 rounding: 2 processes sum in another order, so their distances drift
    # (measured at the end, where the runs are furthest apart), and the sharded embedding rounds
    # differently (accuracies_near). The one-process evaluations, recomputed from checkpoints, are
    # the same path: equal bit for bit.
    train(load_config(recipe, [f"output={tmp_path / 'one_at_2'}"]), stop_at=2)  # step 2's weights
    d_end, same, accuracy_end = val_distances(tmp_path / "one", tiny_data)
    d_mid, _, accuracy_mid = val_distances(tmp_path / "one_at_2", tiny_data)
    assert (accuracy_mid, accuracy_end) == (val_accuracy(rows_one, 2), val_accuracy(rows_one, 4))
    drift = float(np.abs(val_distances(tmp_path / "two", tiny_data)[0] - d_end).max())
    assert val_accuracy(rows_two, 2) in accuracies_near(d_mid, same, drift)
    assert val_accuracy(rows_two, 4) in accuracies_near(d_end, same, drift)
    # rank 0 writes the log alone: the lines of one process, each once (loss at steps 1-4, verification at 2 and 4)
    assert [(r["step"], sorted(r)) for r in rows_two] == [(r["step"], sorted(r)) for r in rows_one]
    assert [r["step"] for r in rows_two if "loss/loss" in r] == [1, 2, 3, 4]
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in a.keys() - {"step", "val/seconds", "val/val/accuracy"}:  # accuracies: above
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)


@pytest.mark.slow  # 12-20 s more on the loaded 2-core machine (a second torchrun start): both together > 40 s
def test_torchrun_forms_a_two_process_group(tiny_data, tmp_path):
    """The run above would pass as well with two unrelated one-process runs writing one folder: torchrun's
    environment really joins the ranks into one group of 2 (a batch of 7 does not split over 2 processes; it would
    at one), and a bad recipe stops both ranks with facelab's one-line error and exit status 2."""
    recipe = write_recipe(tiny_data, tmp_path / "recipe.yaml")
    done = torchrun(tmp_path, "train", str(recipe), f"output={tmp_path / 'bad'}", "data.batch_size=7")
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"facelab: error: config data.batch_size: batch size 7 does not split over rank {rank} of 2 " \
               "processes" in done.stderr, done.stderr[-8000:]
    assert re.search(r"exitcode\s*:\s*2\b", done.stderr), done.stderr[-8000:]  # torchrun's summary: facelab's exit 2
