"""Partial FC (head.sample_rate) against the full softmax (sample_rate 1.0) in the same run (CPU or --device).

One process holding C classes (= one rank's shard C_local of a sharded run) with ArcFace at d=512, B=128
embeddings (a leaf requiring grad), SGD with momentum over the head. Per C and sample rate r:
  memory (computed from the shapes, float32): parameters C·d + their gradient C·d (dense: the sampled
  rows are gathered from the full weight, as Partial FC v2 does) + SGD momentum C·d + logits B·⌈rC⌉
  (+ the normalised copy of the sampled centres ⌈rC⌉·d, the largest intermediate);
  step time: forward + backward + optimizer step, median of `repeats` after `warmup`, rates round-robin.
Only the C whose rate-1.0 total fits in --budget-gb (default 8) are run; the others are printed as
"not run" with their computed memory. Ratios are against rate 1.0 of the same C.

    python -m bench.bench_partial_fc [--classes 100000 1000000 10000000] [--rates 1.0 0.3 0.1]
"""

import argparse
import math
import statistics
import time

import torch

from facelab.heads import build_head

GB = 1024**3


def head_bytes(classes: int, dim: int, batch: int, rate: float) -> dict[str, float]:
    """Computed float32 bytes of the head's state and its largest per-step tensors."""
    used = math.ceil(rate * classes)
    return {"params": 4 * classes * dim, "grads": 4 * classes * dim, "momentum": 4 * classes * dim,
            "logits": 4 * batch * used, "normalised centres": 4 * used * dim}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels are asynchronous: wait for them before reading the clock
        torch.cuda.synchronize(device)


def step_seconds(head, optimizer, x: torch.Tensor, labels: torch.Tensor) -> float:
    _sync(x.device)
    t0 = time.perf_counter()
    head(x, labels)["loss"].backward()
    optimizer.step()
    _sync(x.device)
    elapsed = time.perf_counter() - t0
    optimizer.zero_grad(set_to_none=False)  # keep the dense gradient allocated, as in training
    x.grad = None
    return elapsed


def bench_classes(classes: int, rates: list[float], args: argparse.Namespace) -> dict[float, float]:
    """Median step seconds per rate for one C (heads share nothing: each has its own weight)."""
    heads, opts = {}, {}
    for r in rates:
        heads[r] = build_head("arcface", args.dim, classes, classifier_kwargs={"sample_rate": r, "seed": 0})
        heads[r] = heads[r].to(args.device)
        opts[r] = torch.optim.SGD(heads[r].parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, args.dim, device=args.device, requires_grad=True)  # [B, d]
    labels = torch.randint(0, classes, (args.batch,), device=args.device)  # [B]
    times: dict[float, list[float]] = {r: [] for r in rates}
    for rnd in range(args.warmup + args.repeats):
        for r in rates:
            t = step_seconds(heads[r], opts[r], x, labels)
            if rnd >= args.warmup:
                times[r].append(t)
    return {r: statistics.median(ts) for r, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_partial_fc", description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-gb", type=float, default=8.0)
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="e.g. cuda")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rates = sorted(set(args.rates) | {1.0}, reverse=True)
    print(f"device {args.device}; arcface d={args.dim} B={args.batch} threads={args.threads}; "
          "step = forward+backward+SGD step, "
          f"median of {args.repeats} after {args.warmup} warm-up; memory computed (GB, float32)")
    print(f"{'C':>10} {'rate':>5} {'params+grad+mom':>16} {'logits':>8} {'norm. W':>8} {'total':>7} "
          f"{'ratio':>6} {'step ms':>9} {'ratio':>6}")
    for classes in args.classes:
        mem = {r: head_bytes(classes, args.dim, args.batch, r) for r in rates}
        total = {r: sum(m.values()) / GB for r, m in mem.items()}
        runs = total[1.0] * len(rates) <= args.budget_gb  # every rate's head lives at once while timing
        med = bench_classes(classes, rates, args) if runs else {}
        for r in rates:
            m = mem[r]
            state = (m["params"] + m["grads"] + m["momentum"]) / GB
            timing = f"{med[r] * 1e3:>9.1f} {med[r] / med[1.0]:>5.2f}x" if runs else f"{'not run':>9} {'':>6}"
            print(f"{classes:>10} {r:>5.2f} {state:>16.2f} {m['logits'] / GB:>8.3f} "
                  f"{m['normalised centres'] / GB:>8.3f} {total[r]:>7.2f} {total[r] / total[1.0]:>5.2f}x {timing}")
        if not runs:
            print(f"{'':>10} not run: {total[1.0] * len(rates):.1f} GB for the {len(rates)} heads exceeds "
                  f"--budget-gb {args.budget_gb:g}")


if __name__ == "__main__":
    main()
