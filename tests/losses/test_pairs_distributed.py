"""Under a process group, mining and the loss see the gathered batch: 2 gloo CPU processes reproduce one
process on the concatenated batch (loss value; embedding and β gradients after DDP's mean over ranks)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facelab.config import PairsConfig
from facelab.losses.pairs import build_pair_objective

CASES = {
    "contrastive": PairsConfig(loss="contrastive", kwargs={"pos_margin": 0.2}),
    "triplet_semihard": PairsConfig(loss="triplet", miner="semihard"),
    "margin_all_triplets": PairsConfig(loss="margin", weight=0.7),
}
WORLD = 2


def _batch():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3, 0, 1, 2, 3])  # identities span both ranks
    return x, labels


def _run(x, labels, cfg):
    torch.manual_seed(0)  # same β initialisation everywhere
    obj = build_pair_objective(cfg)
    x = x.clone().requires_grad_(True)
    loss = obj(x, labels)["pairs"]
    loss.backward()
    beta = [p.grad.clone() for p in obj.parameters()]
    return loss.detach(), x.grad, beta


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, labels = _batch()
        share = slice(rank * 8, (rank + 1) * 8)
        results = {name: _run(x[share], labels[share], cfg) for name, cfg in CASES.items()}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # fork: the workers reuse the imported torch (spawn re-imports it, ~20 s on a loaded 2-core machine)
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks, name):
    x, labels = _batch()
    loss, grad, beta = _run(x, labels, CASES[name])
    for rank, results in enumerate(ranks):
        r_loss, r_grad, r_beta = results[name]
        torch.testing.assert_close(r_loss, loss)
        # DDP averages the parameter gradients over ranks: rank r's rows, divided by WORLD, are its share
        torch.testing.assert_close(r_grad / WORLD, grad[rank * 8:(rank + 1) * 8], rtol=1e-5, atol=1e-7)
        for got, want in zip(r_beta, beta, strict=True):  # β sees the whole batch on every rank
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
