"""The whole training step on 2 gloo processes equals one process with the global batch, in float64: FaceTask with
a real backbone (BatchNorm over the global batch, DDP) and the class-sharded head, alone and with the objectives
that need the whole batch (DAIL's dataset classifier through the GRL, DDL's histograms, a pair loss with a
learnable β). Compared: every loss term, the gradients of the backbone, of this rank's class centres and of the
objectives' parameters, and (after one SGD step) that the objectives' parameters are still identical on both
ranks (they are replicated outside DDP)."""

import json

import pytest
import torch

import facelab.train.task as task_module
from facelab.config import config_from_dict
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.distributed import env as dist_env
from facelab.distributed.spawn import spawn
from facelab.train.task import FaceTask

pytestmark = pytest.mark.distributed
B, C, D = 8, 6, 8  # global batch, classes (two datasets of 3 for DAIL), embedding size
OFFSETS = [0, 3, 6]

VARIANTS = {
    "arcface": {},
    "dail": {"head": {"dataset_aware": True}, "dail": {"weight": 0.5, "adversarial_from": 0, "warmup_steps": 0}},
    # crossing dropout: each shard draws its columns' share of the one-process draw (a hash of row and class id)
    "dail+dropout": {"head": {"dataset_aware": True, "crossing_dropout": 0.5}},
    "ddl": {"distill": {"name": "ddl", "bins": 50}},
    "head+pairs": {"objective": "head+pairs", "pairs": {"loss": "margin", "miner": "", "weight": 0.7}},
}


def config(variant: str):
    d = {"model": {"backbone": "tiny", "embedding_size": D, "kwargs": {"width": 4}},
         "head": {"margin": "arcface", "kwargs": {"s": 8.0, "m": 0.3}}}
    for section, values in VARIANTS[variant].items():
        d[section] = {**d.get(section, {}), **values} if isinstance(values, dict) else values
    return config_from_dict(d)


def batch():
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (B, 3, 112, 112), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 3, 0, 3, 4, 1, 4, 1])  # both datasets and both shards in both ranks' rows
    group = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])  # DDL: teacher / student; each branch has positive pairs
    return images, labels, {"ddl_group": group}


def float64_input(images, preprocess):
    return (images.double() / 255.0 - 0.5) / 0.5


def step(variant: str, rank: int, size: int) -> dict:
    torch.manual_seed(0)  # as train() does before building the task: every rank builds the same parameters
    cfg = config(variant)
    offsets = OFFSETS if variant.startswith("dail") else None
    task = FaceTask(cfg, C, {**PREPROCESS_DEFAULT, "size": 112}, shard=(rank, size), offsets=offsets).double()
    task.wrap_backbone(lambda backbone: dist_env.wrap_backbone(backbone, dist_env.DistEnv(rank, size)))
    assert (task.train_backbone is task.backbone) == (size == 1)  # DDP-wrapped in the 2-process run
    task.train()
    images, labels, extras = batch()
    rows = slice(rank * B // size, (rank + 1) * B // size)
    losses = task(images[rows], labels[rows], **{k: v[rows] for k, v in extras.items()}).losses
    losses["loss"].backward()
    clf = task.head.classifier
    out = {"losses": {k: v.item() for k, v in losses.items()},
           "backbone": [p.grad.flatten().tolist() for p in task.backbone.parameters() if p.requires_grad],
           "centres": clf.weight.grad.tolist(), "start": clf.start,
           "objectives": [p.grad.flatten().tolist() for p in task.objectives.parameters()]}
    with torch.no_grad():  # one SGD step of the replicated objective parameters
        out["objectives_after"] = [(p - 0.1 * p.grad).flatten().tolist() for p in task.objectives.parameters()]
    return out


def worker(rank, size, path):
    task_module.to_input = float64_input  # float64 end to end (this process only)
    results = {v: step(v, rank, size) for v in VARIANTS}
    gathered = [None] * size
    torch.distributed.all_gather_object(gathered, results)
    if rank == 0:
        with open(path, "w") as f:
            json.dump(gathered, f)


def max_err(a, b) -> float:
    return (torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max().item()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("f64") / "two.json"
    spawn(worker, 2, str(path))
    original = task_module.to_input
    task_module.to_input = float64_input
    try:
        one = {v: step(v, 0, 1) for v in VARIANTS}
    finally:
        task_module.to_input = original
    return one, json.loads(path.read_text())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_processes_equal_one_in_float64(runs, variant):
    one, two = runs
    ref = one[variant]
    terms = {"arcface": 2, "dail": 3, "dail+dropout": 2, "ddl": 5, "head+pairs": 3}  # ce + objective terms + loss
    assert len(ref["losses"]) == terms[variant]
    for rank in range(2):
        got = two[rank][variant]
        assert got["losses"].keys() == ref["losses"].keys()
        for k, v in ref["losses"].items():
            assert abs(got["losses"][k] - v) < 1e-10, (variant, rank, k, got["losses"][k], v)
        for i, (a, b) in enumerate(zip(got["backbone"], ref["backbone"], strict=True)):
            assert max_err(a, b) < 1e-9, (variant, rank, "backbone parameter", i)
        shard = slice(got["start"], got["start"] + len(got["centres"]))
        assert max_err(got["centres"], ref["centres"][shard]) < 1e-9, (variant, rank, "centres")
        for a, b in zip(got["objectives"], ref["objectives"], strict=True):
            assert max_err(a, b) < 1e-9, (variant, rank, "objective parameters")
    assert two[0][variant]["objectives_after"] == two[1][variant]["objectives_after"]  # bit-identical copies


def test_the_variants_exercise_what_they_claim(runs):
    one, _ = runs
    assert one["dail"]["objectives"] and one["head+pairs"]["objectives"]  # dataset classifier; margin-loss β
    assert max(abs(x) for g in one["dail"]["objectives"] for x in g) > 0
    assert abs(one["ddl"]["losses"]["ddl_kl_pos"]) > 0 and abs(one["dail"]["losses"]["dataset_ce"]) > 0
    assert one["dail+dropout"]["losses"]["ce"] != one["dail"]["losses"]["ce"]  # some crossing columns were drawn
