"""Checkpoints of a class-sharded run hold the FULL classifier, so a run resumes on any world size.

Saving: every rank's rows of the sharded tensors (centres, biases, per-class margins, and the
optimizer state of those parameters: SGD momentum, AdamW moments) are gathered in class order;
rank 0 writes.
Loading: each rank slices its class range [start, end) (K rows per class for the centres) back out.
At world size 1 both directions are the identity.
"""

import torch
import torch.distributed as dist
from torch import Tensor, nn

# keys of FaceHead.state_dict()
SHARDED = ("classifier.weight", "classifier.bias", "classifier.class_margins")


def _rows(head: nn.Module, key: str) -> slice:
    clf = head.classifier
    k = clf.sub_centers if key.endswith("weight") else 1
    return slice(clf.start * k, clf.end * k)


def _gather(t: Tensor) -> Tensor:
    """Rows [n_r, ...] of every rank (n_r may differ) concatenated in rank order."""
    size = dist.get_world_size()
    counts = [torch.zeros((), dtype=torch.int64, device=t.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor(t.shape[0], device=t.device))
    most = int(max(counts))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, counts, strict=True)])


def _sharded_params(head: nn.Module) -> dict[int, str]:
    """id(parameter) -> its key in SHARDED, for the sharded parameters the head has."""
    named = dict(head.named_parameters())
    return {id(named[k]): k for k in SHARDED if k in named}


def _optimizer_keys(optimizer: torch.optim.Optimizer, head: nn.Module) -> dict[int, str]:
    """Index of each sharded parameter in optimizer.state_dict()["state"] -> its SHARDED key."""
    ids = _sharded_params(head)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: ids[id(p)] for i, p in enumerate(params) if id(p) in ids}


def _sharded(head: nn.Module) -> bool:
    """The head has a class-sharded classifier (a pair-loss run has no head)."""
    clf = getattr(head, "classifier", None)
    return clf is not None and clf.world_size > 1


def full_state(head: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(head state dict, optimizer state dict) with the sharded rows of every rank; collective."""
    state, opt = head.state_dict(), optimizer.state_dict()
    if not _sharded(head):
        return state, opt
    for key in SHARDED:
        if key in state:
            state[key] = _gather(state[key])
    # state_dict shares the live dicts
    opt = {**opt, "state": {i: dict(v) for i, v in opt["state"].items()}}
    for index, key in _optimizer_keys(optimizer, head).items():
        rows = getattr(head.classifier, key.split(".")[1]).shape[0]
        for name, value in opt["state"].get(index, {}).items():
            if isinstance(value, Tensor) and value.ndim and value.shape[0] == rows:
                opt["state"][index][name] = _gather(value)
    return state, opt


def slice_state(
    head: nn.Module, optimizer: torch.optim.Optimizer, state: dict, opt: dict
) -> tuple[dict, dict]:
    """This rank's rows of a full (head, optimizer) state from `full_state` (any world size)."""
    if not _sharded(head):
        return state, opt
    state = dict(state)
    for key in SHARDED:
        if key in state:
            state[key] = state[key][_rows(head, key)]
    opt = {**opt, "state": {i: dict(v) for i, v in opt["state"].items()}}
    full_rows = head.classifier.num_classes
    for index, key in _optimizer_keys(optimizer, head).items():
        per_class = head.classifier.sub_centers if key.endswith("weight") else 1
        for name, value in opt["state"].get(index, {}).items():
            if isinstance(value, Tensor) and value.ndim and value.shape[0] == full_rows * per_class:
                opt["state"][index][name] = value[_rows(head, key)]
    return state, opt
