"""The training DataLoader: built once per run, decoding in persistent worker processes.

The batch sampler stays in the main process (a DataLoader asks it for index lists and hands those
to the workers), so `batch_sampler.set_position(epoch, batch)` before each `iter(loader)` still
chooses where an epoch starts, and resume stays exact. Items are decided by the sampler alone
((index, flip) pairs), so the batches do not depend on the number of workers. Persistent workers
keep their processes (and the dataset's open files or memory maps) from epoch to epoch instead of
forking new ones each epoch. On CUDA, batches land in pinned (page-locked) memory so that
`to_device` copies them asynchronously.
"""

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facelab.errors import FacelabError


def make_loader(
    dataset: Dataset,
    batch_sampler: Sampler,
    workers: int,
    device: torch.device,
    prefetch_factor: int = 2,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over `batch_sampler`'s batches: `workers` persistent processes (0: load in this
    process), each keeping `prefetch_factor` batches ready; pinned memory when `device` is CUDA.

    The loader has its own generator (seeded by `seed`): every `iter()` draws the workers' base
    seed from it. Without one it would draw from torch's global RNG, so each epoch start, and a
    resume's first `iter()`, would shift the stream that the training step draws from (ElasticFace's
    margins, random miners) and that a checkpoint restores: a resumed run would then draw other
    numbers than the uninterrupted one."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise FacelabError(f"config data.workers: {workers!r} is invalid: must be an integer >= 0")
    if (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
            or prefetch_factor < 1):
        raise FacelabError(f"loader prefetch_factor: {prefetch_factor!r} is invalid: must be an "
                           "integer >= 1")
    parallel = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if workers else {}
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        **parallel,
    )


def to_device(batch: list, device: torch.device) -> list:
    """Move a loader batch (tensors, or dicts of tensors) to `device`; non-blocking, which overlaps
    the copy with compute when the source is pinned and is a plain copy otherwise."""
    out = []
    for item in batch:
        if isinstance(item, dict):
            out.append({k: v.to(device, non_blocking=True) for k, v in item.items()})
        else:
            out.append(item.to(device, non_blocking=True))
    return out

