"""train() on 2 gloo processes (DDP backbone with global BatchNorm, sharded classifier) gives the weights,
classifier, optimizer state and validation accuracy of one process on the same global batches; a run
stopped on one world size resumes on the other and ends where the uninterrupted run ends."""

import json

import numpy as np
import pytest
from tests.references.distributed_runs import accuracies_near, cfg_dict, same_run, val_distances

from facelab.config import config_from_dict
from facelab.distributed.spawn import spawn
from facelab.model import load_checkpoint
from facelab.train.loop import train

pytestmark = pytest.mark.distributed


def worker(rank, size, d, resume, stop_at):
    train(config_from_dict(d), resume=resume, stop_at=stop_at)


@pytest.mark.slow  # ~60 s on the loaded 2-core machine (spawned imports, 4 steps at 112 px)
def test_two_processes_train_like_one(tiny_data, tmp_path):
    one = train(config_from_dict(cfg_dict(tiny_data, tmp_path / "one")))
    spawn(worker, 2, cfg_dict(tiny_data, tmp_path / "two"), False, None)
    same_run(tmp_path / "one", tmp_path / "two")
    assert load_checkpoint(tmp_path / "two")["head"]["classifier.weight"].shape == (6, 16)  # the full classifier
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # sharded verification in float32 on 2 processes: the one-process accuracy up to rounding (the
    # one-process evaluation is recomputed exactly first: the same path)
    d_one, same, accuracy = val_distances(tmp_path / "one", tiny_data)
    assert accuracy == one["pairs"]["val"]["accuracy"]
    drift = float(np.abs(val_distances(tmp_path / "two", tiny_data)[0] - d_one).max())
    assert two["pairs"]["val"]["accuracy"] in accuracies_near(d_one, same, drift)


@pytest.mark.slow
def test_resume_across_world_sizes(tiny_data, tmp_path):
    train(config_from_dict(cfg_dict(tiny_data, tmp_path / "ref")))
    spawn(worker, 2, cfg_dict(tiny_data, tmp_path / "a"), False, 2)  # 2 processes, stop, 1 process
    train(config_from_dict(cfg_dict(tiny_data, tmp_path / "a")), resume=True)
    same_run(tmp_path / "ref", tmp_path / "a")
    # 1 process, stop, 2 processes
    train(config_from_dict(cfg_dict(tiny_data, tmp_path / "b")), stop_at=2)
    spawn(worker, 2, cfg_dict(tiny_data, tmp_path / "b"), True, None)
    same_run(tmp_path / "ref", tmp_path / "b")
