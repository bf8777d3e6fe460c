"""Partial FC (head.sample_rate) against the full softmax (sample_rate 1.0) in the same run (CPU or --device).

One process holding C classes (= one rank's shard C_local of a sharded run) with ArcFace at d=512, B=128
embeddings (a leaf requiring grad), SGD with momentum over the head. Each (C, rate) configuration runs
alone in its own fresh subprocess (`--one C RATE`, re-invoking this module with sys.executable), one at a
time, rates in the order given (1.0 first when it is not among them: it is the baseline of the ratios).
The subprocess builds one head + optimiser, runs `warmup` + `repeats` steps and reports:
  step time: forward + backward + optimizer step, median of the `repeats` timed steps (the device is
  synchronised before each clock reading);
  measured peak memory: on CPU, the peak resident set size of the subprocess above its RSS right before the
  head is built (after the imports). Linux: the peak is VmHWM of /proc/self/status, reset to the current
  RSS (write "5" to /proc/self/clear_refs) when the baseline is taken. Not getrusage(RUSAGE_SELF).ru_maxrss:
  it is monotone, in KiB on Linux, and on Linux also inherits the parent's high-water mark through
  fork/vfork + exec (a child of a 1.5 GB process starts at ru_maxrss 1.5 GB, measured), so it only serves
  as the fallback where /proc is missing (max - baseline after imports, a lower bound).
  On CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, less memory_allocated at the reset
  (the caching allocator's tensors; the CUDA context and the allocator's unused cache are not counted).
Computed memory (from the shapes, float32): parameters C·d + their gradient C·d (dense: the sampled
rows are gathered from the full weight, as Partial FC v2 does) + SGD momentum C·d + logits B·⌈rC⌉
(+ at rate < 1 the copy of the sampled centres ⌈rC⌉·d; no normalised copy of the centres is made, see
facelab.heads.normalized_linear). Autograd's and the optimizer's temporaries come on top: on CPU the measured
peak was 1.46x the computed total at C=100k, rate 1.0, 1.25x at 1M, 1.2-1.75x at rates 0.3 and 0.1 (before
normalized_linear, with gradients kept between steps: 2.04x and 1.90x at rate 1.0; at C <= 50k a fixed ~0.2 GiB,
thread pools and allocator, lifts the ratio to 2.5-3x). So a configuration runs only if NEED_FACTOR (2.1) x its
computed total fits in --budget-gb (GiB; default 80% of MemAvailable in /proc/meminfo, or of the device's free
memory with --device cuda): C=1M at rate 1.0 (computed 6.2 GiB, need 13.0) runs on a machine with 24 GB, 10M
(computed 62 GiB) does not. The others are printed as "not run" with their computed memory.
Ratios (measured peak memory, step time) are against rate 1.0 of the same C. --json PATH also writes the
rows (to PATH.tmp, then renamed).

    python -m bench.bench_partial_fc [--classes 100000 1000000 10000000] [--rates 1.0 0.3 0.1] [--json rows.json]
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from facelab.config import OptimConfig
from facelab.heads import build_head
from facelab.train.optim import build_optimizer

GB = 1024**3  # the figures are in GiB (2^30 bytes)
NEED_FACTOR = 2.1  # measured peak / computed total: at most 1.75 on CPU (2.04 before normalized_linear), plus a margin
BUDGET_FRACTION = 0.8  # default --budget-gb: this share of the available memory
ROOT = Path(__file__).resolve().parents[1]  # the subprocess runs `-m bench.bench_partial_fc` from here
RESULT = "RESULT "  # prefix of the subprocess's one line of results on stdout


def head_bytes(classes: int, dim: int, batch: int, rate: float) -> dict[str, float]:
    """Computed float32 bytes of the head's state and its largest per-step tensors."""
    used = math.ceil(rate * classes)
    return {"params": 4 * classes * dim, "grads": 4 * classes * dim, "momentum": 4 * classes * dim,
            "logits": 4 * batch * used, "sampled centres": 4 * used * dim if rate < 1.0 else 0}


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
    optimizer.zero_grad(set_to_none=True)  # as the training loop does: each backward allocates the gradient afresh
    x.grad = None
    return elapsed


# ---- memory of this process (used inside the subprocess) ----

def _status_kib(field: str) -> int | None:
    """A 'kB' field of /proc/self/status (VmRSS, VmHWM), None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Peak memory above a baseline taken at construction: CUDA allocator, or process RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        elif _reset_peak_rss():
            self.method = "VmHWM - VmRSS"
            self.base = 1024 * _status_kib("VmRSS")
        else:
            import resource  # POSIX only

            self.method = "ru_maxrss"
            self.base = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.method == "VmHWM - VmRSS":
            return 1024 * _status_kib("VmHWM") - self.base
        import resource

        return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base


def measure_one(classes: int, rate: float, dim: int, batch: int, warmup: int, repeats: int,
                device: torch.device) -> dict:
    """In this process: build one head + optimiser, time warmup + repeats steps; median seconds, peak bytes.
    Meant for a fresh process (run_one), where nothing else has been allocated since the imports."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.init()
    memory = PeakMemory(device)
    head = build_head("arcface", dim, classes, classifier_kwargs={"sample_rate": rate, "seed": 0}).to(device)
    optimizer = build_optimizer(OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4), head)  # as training builds it
    x = torch.randn(batch, dim, device=device, requires_grad=True)  # [B, d]
    labels = torch.randint(0, classes, (batch,), device=device)  # [B]
    times = [step_seconds(head, optimizer, x, labels) for _ in range(warmup + repeats)][warmup:]
    return {"step_s": statistics.median(times), "step_s_all": times, "peak_bytes": memory.peak_bytes(),
            "memory_method": memory.method}


def _child_command(classes: int, rate: float, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "bench.bench_partial_fc", "--one", str(classes), repr(rate),
            "--dim", str(args.dim), "--batch", str(args.batch), "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--device", str(args.device)]


def run_one(classes: int, rate: float, args: argparse.Namespace) -> dict:
    """measure_one in a fresh subprocess; {"error": ...} if it failed (e.g. killed for memory)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(_child_command(classes, rate, args), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        return {"error": f"subprocess exit status {proc.returncode}"}
    return json.loads(lines[-1][len(RESULT):])


def free_bytes(device: torch.device) -> int:
    """Memory available for a new process: MemAvailable (Linux) on CPU, the device's free memory on CUDA
    (asked in a subprocess, so that this process creates no CUDA context)."""
    if device.type == "cuda":
        code = f"import torch; print(torch.cuda.mem_get_info(torch.device({str(device)!r}))[0])"
        return int(subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE,
                                  text=True).stdout.split()[-1])
    try:
        with open("/proc/meminfo") as f:
            return 1024 * int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))
    except (OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def bench(args: argparse.Namespace) -> list[dict]:
    """One row per (C, rate), printed as a table; configurations run one at a time, each in its subprocess."""
    rates = list(dict.fromkeys(args.rates))  # the order given, without repeats
    if 1.0 not in rates:
        rates.insert(0, 1.0)  # the baseline of the ratios
    print(f"device {args.device}; arcface d={args.dim} B={args.batch} threads={args.threads}; "
          f"step = forward+backward+SGD step, median of {args.repeats} after {args.warmup} warm-up; "
          f"one subprocess per row; computed memory float32 (GiB), run if {NEED_FACTOR}x computed <= "
          f"budget {args.budget_gb:.1f} GiB", flush=True)
    header = (f"{'C':>10} {'rate':>5} {'params+grad+mom':>16} {'logits':>8} {'sampled':>8} {'computed':>9} "
              f"{'measured':>9} {'meas/comp':>9} {'vs 1.0':>6} {'step ms':>9} {'vs 1.0':>6}")
    print(header, flush=True)
    rows = []
    for classes in args.classes:
        group = []
        for r in rates:
            mem = head_bytes(classes, args.dim, args.batch, r)
            total = sum(mem.values())
            row = {"classes": classes, "rate": r, "dim": args.dim, "batch": args.batch,
                   "device": str(args.device), "computed_bytes": mem, "computed_total_bytes": total,
                   "need_bytes": NEED_FACTOR * total, "run": NEED_FACTOR * total <= args.budget_gb * GB}
            if row["run"]:
                print(f"  running C={classes} rate={r:g} ...", file=sys.stderr, flush=True)
                row.update(run_one(classes, r, args))
            group.append(row)
        base = next((row for row in group if row["rate"] == 1.0 and "step_s" in row), None)
        for row in group:
            if base is not None and "step_s" in row:
                row["time_ratio"] = row["step_s"] / base["step_s"]
                row["memory_ratio"] = row["peak_bytes"] / base["peak_bytes"]
            print(_format(row), flush=True)
            if not row["run"]:
                print(f"{'':>10} not run: {NEED_FACTOR}x {row['computed_total_bytes'] / GB:.2f} = "
                      f"{row['need_bytes'] / GB:.1f} GiB exceeds --budget-gb {args.budget_gb:.1f}", flush=True)
        rows += group
    return rows


def _format(row: dict) -> str:
    m = row["computed_bytes"]
    state = (m["params"] + m["grads"] + m["momentum"]) / GB
    total = row["computed_total_bytes"] / GB
    text = (f"{row['classes']:>10} {row['rate']:>5.2f} {state:>16.2f} {m['logits'] / GB:>8.3f} "
            f"{m['sampled centres'] / GB:>8.3f} {total:>9.2f} ")
    if not row["run"]:
        return text + f"{'not run':>9}"
    if "error" in row:
        return text + f"{'failed':>9} ({row['error']})"
    ratio = (lambda key: f"{row[key]:>5.2f}x") if "time_ratio" in row else (lambda key: f"{'-':>6}")
    return text + (f"{row['peak_bytes'] / GB:>9.2f} {row['peak_bytes'] / GB / total:>8.2f}x {ratio('memory_ratio')} "
                   f"{row['step_s'] * 1e3:>9.1f} {ratio('time_ratio')}")


def write_json(path: str, args: argparse.Namespace, rows: list[dict]) -> None:
    settings = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()
                if k not in ("one", "json")}
    settings.update(need_factor=NEED_FACTOR, budget_bytes=args.budget_gb * GB)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, "rows": rows}, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m bench.bench_partial_fc", description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-gb", type=float, default=None,
                   help=f"GiB; default {BUDGET_FRACTION:.0%} of the available (device) memory")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="e.g. cuda")
    p.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    p.add_argument("--one", nargs=2, metavar=("C", "RATE"), help=argparse.SUPPRESS)  # the subprocess
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:  # subprocess: one configuration, one line of JSON results
        result = measure_one(int(args.one[0]), float(args.one[1]), args.dim, args.batch, args.warmup,
                             args.repeats, args.device)
        print(RESULT + json.dumps(result), flush=True)
        return [result]
    if args.budget_gb is None:
        args.budget_gb = BUDGET_FRACTION * free_bytes(args.device) / GB
    rows = bench(args)
    if args.json:
        write_json(args.json, args, rows)
    failed = [f"C={row['classes']} rate={row['rate']:g}" for row in rows if "error" in row]
    if failed:
        raise RuntimeError(f"bench_partial_fc: failed configurations: {', '.join(failed)}")
    return rows


if __name__ == "__main__":
    main()
