"""Run a function in N local processes joined by a gloo process group (tests, benchmarks)."""

import os
import sys
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable, world_size: int, init: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()
    # A worker that finished leaves at once, skipping interpreter teardown: there, gloo's transport
    # threads were seen still joinable when static destructors ran ("terminate called without an
    # active exception", SIGABRT, in full-suite runs after the work and its files were complete). A
    # failing fn raises above instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable, world_size: int, *args: object) -> None:
    """fn(rank, world_size, *args) in `world_size` fresh processes (fn must be importable by name);
    an exception in any of them is raised here."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _entry,
            args=(fn, world_size, f"file://{tmp}/store", args),
            nprocs=world_size,
            join=True,
        )
