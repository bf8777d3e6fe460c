"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

`torchrun --nproc_per_node N -m facelab train CONFIG` starts N copies of the trainer; each calls
`setup(cfg.train.device)`: gloo on CPU, nccl on CUDA with the device cuda:LOCAL_RANK. Multi-node
runs use torchrun's own flags (--nnodes, --node_rank, --rdzv_endpoint). A process group that is
already initialised (tests that spawn processes themselves) is used as it is. Without
WORLD_SIZE > 1: one process.
"""

import gc
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from facelab.distributed.batchnorm import convert_batchnorm
from facelab.errors import FacelabError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # this module initialised the process group and destroys it in `teardown`
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0


def setup(device: str) -> DistEnv:
    """The DistEnv of this process; initialises the default process group when torchrun asked for
    one."""
    cuda = device.startswith("cuda")
    if dist.is_available() and dist.is_initialized():
        rank, size, owns = dist.get_rank(), dist.get_world_size(), False
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, size, owns = dist.get_rank(), dist.get_world_size(), True
    else:
        return DistEnv(device=torch.device(device))
    if cuda and torch.device(device).index is not None:
        raise FacelabError(
            f"config train.device={device!r}: a multi-process run takes 'cuda' (cuda:LOCAL_RANK)"
        )
    if cuda:
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        where = torch.device(device)
    return DistEnv(rank, size, where, owns)


def teardown(env: DistEnv, finished: bool = False) -> None:
    """Destroy the process group this module created, after collecting the run's garbage: DDP's
    reducer (kept in reference cycles) holds the group, and a group freed only at interpreter exit
    can take a finished CPU run down with "terminate called without an active exception" (SIGABRT).
    finished: every rank completed the run, so they first wait for each other (rank 0 may still be
    writing files); a failed rank leaves at once."""
    if env.owns_group and dist.is_initialized():
        if finished:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def on_main(env: DistEnv, action: Callable[[], T]) -> T | None:
    """`action()` on rank 0 (the run folder's writer); every rank raises rank 0's FacelabError if it
    failed, so no rank waits at a barrier for a rank that has left. Other ranks get None."""
    result, message = None, None
    if env.main:
        try:
            result = action()
        except FacelabError as e:
            message = str(e)
            if env.world_size == 1:
                raise
    if env.world_size > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise FacelabError(message)
    return result


def wrap_backbone(backbone: nn.Module, env: DistEnv) -> nn.Module:
    """DistributedDataParallel(backbone) in a multi-process run, the backbone itself otherwise.
    BatchNorm layers normalise over the global batch: torch's SyncBatchNorm on CUDA, facelab's
    GlobalBatchNorm on CPU (torch's is GPU-only); converted in place, same parameters."""
    if env.world_size == 1:
        return backbone
    if env.device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    else:
        convert_batchnorm(backbone)
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(backbone, device_ids=ids)


def clip_grad_norm(
    parameters: Iterable[nn.Parameter], max_norm: float, classifier: nn.Module | None
) -> None:
    """torch's clip_grad_norm_, with the norm of a class-sharded `classifier`'s gradients summed
    over ranks (squared), so every rank scales by the same global norm as one process would (None:
    no classifier)."""
    if classifier is None or classifier.world_size == 1:
        torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
        return
    mine = {id(p) for p in classifier.parameters()}
    params = [p for p in parameters if p.grad is not None]
    local = [p.grad for p in params if id(p) in mine]  # this rank's classes
    # backbone: the same on every rank after DDP
    replicated = [p.grad for p in params if id(p) not in mine]
    device = params[0].grad.device if params else torch.device("cpu")
    shard_sq = _squares(local, device)
    dist.all_reduce(shard_sq)
    total = (shard_sq + _squares(replicated, device)).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in local + replicated:
        g.mul_(coef.to(g.dtype))


class NullLogger:
    """RunLogger's interface for ranks other than 0, which write nothing."""

    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def _squares(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Σ of the squared entries of `grads`, float64 [] (0 for none)."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        total = total + (g.double() ** 2).sum()
    return total
