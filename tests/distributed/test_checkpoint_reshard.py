"""full_state gathers a sharded head and its optimizer rows into exactly the one-process state (AdaM per-class
margins, 3 sub-centres, SGD momentum); slice_state gives each rank its rows back (2 gloo processes)."""

import json

import pytest
import torch

from facelab.distributed.checkpoint import full_state, slice_state
from facelab.distributed.ops import gather_rows
from facelab.distributed.spawn import spawn
from facelab.heads import build_head

pytestmark = pytest.mark.distributed
D, C = 4, 5


def trained(rank, size):
    """A head after two SGD steps on a fixed global batch (this rank's share of it)."""
    kw = {"rank": rank, "world_size": size, "seed": 3}
    head = build_head("adam_softmax", D, C, sub_centers=3, classifier_kwargs=kw).double()
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(6, D, generator=g, dtype=torch.float64), torch.tensor([0, 4, 2, 1, 3, 4])
    mine = slice(rank * 6 // size, (rank + 1) * 6 // size)
    for _ in range(2):
        opt.zero_grad()
        xs, ys = x[mine], labels[mine]
        if head.sharded:  # the caller hands a sharded head the global batch
            xs, ys = gather_rows(xs), gather_rows(ys)
        head(xs, ys)["loss"].backward()
        opt.step()
    return head, opt


def worker(rank, size, out):
    head, opt = trained(rank, size)
    state, opt_state = full_state(head, opt)
    live = opt.state[head.classifier.weight]["momentum_buffer"].shape[0]  # saving leaves the optimizer's own rows
    ref, ref_opt = trained(0, 1)  # one process, the same global batch
    errors = [(state[k] - v).abs().max().item() for k, v in ref.state_dict().items()]
    for i, s in ref_opt.state_dict()["state"].items():
        errors.append((opt_state["state"][i]["momentum_buffer"] - s["momentum_buffer"]).abs().max().item())
    fresh, fresh_opt = trained(rank, size)  # same shapes; overwritten by the slices
    fresh_opt.load_state_dict(slice_state(fresh, fresh_opt, state, opt_state)[1])
    fresh.load_state_dict(slice_state(fresh, fresh_opt, state, opt_state)[0])
    back = [torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), head.state_dict().values(), strict=True)]
    mom = [torch.equal(fresh_opt.state[p]["momentum_buffer"], opt.state[q]["momentum_buffer"])
           for p, q in zip(fresh.parameters(), head.parameters(), strict=True)]
    result = {"shapes": [list(state["classifier.weight"].shape), list(state["classifier.class_margins"].shape)],
              "max_error": max(errors), "round_trip": all(back) and all(mom),
              "live_rows": live == head.classifier.weight.shape[0]}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)


def test_full_state_is_the_one_process_state_and_slices_back(tmp_path):
    spawn(worker, 2, str(tmp_path / "r"))
    for rank in range(2):
        result = json.loads((tmp_path / f"r.{rank}").read_text())
        assert result["shapes"] == [[3 * C, D], [C]]
        assert result["max_error"] < 1e-10
        assert result["round_trip"] and result["live_rows"]
