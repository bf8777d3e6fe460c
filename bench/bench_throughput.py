"""Training throughput (images/s) and model FLOPs utilisation of face backbones at 112×112.

One training step = FaceTask forward (uint8 -> normalise -> backbone -> ArcFace over `--classes`),
backward, SGD step. Per model, in the same run: fp32 eager (the baseline), bf16 autocast + channels_last,
with `--compile` also torch.compile of the backbone; each on one synthetic uint8 batch kept on the device,
then the fastest variant fed by the real loader (facelab.data.loader.make_loader over a folder of encoded
JPEGs, `--workers` processes). Prints images/s, the ratio to the baseline and MFU:
achieved FLOP/s / peak, with training FLOPs = 3 × forward FLOPs (2 × count_macs; the head is not counted).
Peak: `--peak-tflops`, else a table of known GPUs (dense bf16 / tf32), else on CPU a measured square
fp32 matmul on the same threads (so on CPU "MFU" only says how far convolutions are from a matmul).
Times are the mean over the timed steps after warm-up.

    python -m bench.bench_throughput [--device cuda --batch-size 256 --steps 30 --compile --models iresnet50]
"""

import argparse
import contextlib
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.jpeg_data import make_jpeg_folder
from facelab.backbones import count_macs
from facelab.config import config_from_dict
from facelab.data.folder import ImageFolderDataset
from facelab.data.loader import make_loader, to_device
from facelab.data.samplers import EpochBatchSampler
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.train.optim import build_optimizer
from facelab.train.task import FaceTask

MODELS = ("iresnet50", "iresnet100", "mobilefacenet")
# dense peak TFLOP/s by device-name fragment: (bf16, fp32 via tf32). H100 SXM / A100 datasheets.
KNOWN_PEAKS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0)}
VARIANTS = {  # name -> (amp dtype or None, channels_last, compile)
    "fp32 eager": (None, False, False),
    "bf16+cl": (torch.bfloat16, True, False),
    "bf16+cl+compile": (torch.bfloat16, True, True),
}
CPU_DEFAULTS = {"batch_size": 2, "steps": 1, "warmup": 1, "classes": 1000}  # a smoke figure, ~1-2 min
GPU_DEFAULTS = {"batch_size": 256, "steps": 20, "warmup": 5, "classes": 10000}


def device_defaults(args: argparse.Namespace, cpu: dict, gpu: dict) -> argparse.Namespace:
    """Fill the options left at None with the CPU or the GPU defaults (by args.device)."""
    for key, value in (gpu if torch.device(args.device).type == "cuda" else cpu).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: str, variant: str, device: torch.device, classes: int) -> tuple[Callable, FaceTask]:
    """A closure step(images uint8 [B, 3, 112, 112], labels [B]) doing one full training step."""
    amp, channels_last, compiled = VARIANTS[variant]
    cfg = config_from_dict({"model": {"backbone": model, "embedding_size": 512},
                            "head": {"margin": "arcface", "kwargs": {"s": 64.0, "m": 0.5}}})
    task = FaceTask(cfg, classes, dict(PREPROCESS_DEFAULT)).to(device)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
    if compiled:  # the training forward runs the compiled backbone (same weights)
        task.wrap_backbone(torch.compile)
    optimizer = build_optimizer(cfg.optim, task)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.contiguous(memory_format=fmt)
        ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            loss = task(images, labels).losses["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, task


def time_steps(step: Callable, batches, warmup: int, steps: int, device: torch.device) -> float:
    """Mean seconds per step over `steps` steps after `warmup`; `batches` yields (images, labels). The mean
    (not the best step) so that waiting for the loader counts."""
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    sync(device)
    return (time.perf_counter() - t0) / steps


def loader_batches(loader, sampler, device: torch.device):
    """Loader batches moved to `device`, epoch after epoch (the loop's pattern), forever."""
    epoch = 0
    while True:
        sampler.set_position(epoch)
        for images, labels in loader:
            yield to_device([images, labels], device)
        epoch += 1


def peak_flops(device: torch.device, given: float | None, threads: int) -> tuple[dict[str, float], str]:
    """Peak FLOP/s per precision ('fp32', 'bf16') and where it came from."""
    if given:
        return {"fp32": given * 1e12, "bf16": given * 1e12}, f"--peak-tflops {given}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32) in KNOWN_PEAKS.items():
            if key in name:
                return {"fp32": fp32 * 1e12, "bf16": bf16 * 1e12}, f"{name}: datasheet dense bf16 {bf16}, tf32 {fp32}"
        return {}, f"{name}: unknown peak (pass --peak-tflops)"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = min(_timed(lambda: a @ b) for _ in range(5))
    peak = 2 * n**3 / best
    where = f"CPU: measured fp32 {n}² matmul on {threads} threads, {peak / 1e9:.0f} GFLOP/s"
    return {"fp32": peak, "bf16": peak}, where


def _timed(fn: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 256 on GPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default: 1 on CPU, 20 on GPU")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--workers", type=int, default=2, help="loader processes for the end-to-end figure")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the backbone")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="CUDA: cuDNN heuristics instead of timing algorithms (train.cudnn_benchmark: false)")
    return device_defaults(p.parse_args(argv), CPU_DEFAULTS, GPU_DEFAULTS)


def bench_model(model: str, args, device: torch.device, loader, sampler, peaks: dict) -> list[tuple]:
    """Rows (variant, input, images/s, ratio to fp32 eager, MFU or None) for one model."""
    train_flops = 3 * 2 * count_macs(FaceTask(config_from_dict({"model": {"backbone": model}}), 2,
                                              dict(PREPROCESS_DEFAULT)).backbone)
    images = torch.randint(0, 256, (args.batch_size, 3, 112, 112), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)
    variants = [v for v in VARIANTS if args.compile or "compile" not in v]
    rows, rates = [], {}
    for variant in variants:
        torch.manual_seed(0)
        step, _ = make_step(model, variant, device, args.classes)
        seconds = time_steps(step, itertools.repeat((images, labels)), args.warmup, args.steps, device)
        rates[variant] = args.batch_size / seconds
    best = max(rates, key=rates.get)
    step, _ = make_step(model, best, device, args.classes)
    seconds = time_steps(step, loader_batches(loader, sampler, device), args.warmup, args.steps, device)
    rates[f"{best}, loader"] = args.batch_size / seconds
    for name, rate in rates.items():
        precision = "fp32" if name.startswith("fp32") else "bf16"
        mfu = rate * train_flops / peaks[precision] if peaks else None
        rows.append((name, rate, rate / rates["fp32 eager"], mfu))
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark  # as the training loop sets it on CUDA
    peaks, source = peak_flops(device, args.peak_tflops, args.threads)
    cudnn = f", cudnn.benchmark {torch.backends.cudnn.benchmark}" if device.type == "cuda" else ""
    print(f"device {device}, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"ArcFace over {args.classes} classes, loader: {args.workers} workers; peak: {source}{cudnn}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="facelab-bench-") as tmp:
        per_id = max(2, -(-2 * args.batch_size // 16))  # 16 identities, at least two batches per epoch
        folder = make_jpeg_folder(Path(tmp) / "train", 16, per_id)
        dataset = ImageFolderDataset(folder)
        sampler = EpochBatchSampler(len(dataset), args.batch_size, seed=0)
        loader = make_loader(dataset, sampler, args.workers, device)
        print(f"{'model':<15}{'variant':<26}{'images/s':>10}{'ratio':>8}{'MFU':>8}")
        for model in args.models:
            t0 = time.perf_counter()
            for name, rate, ratio, mfu in bench_model(model, args, device, loader, sampler, peaks):
                mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
                print(f"{model:<15}{name:<26}{rate:>10.3g}{ratio:>7.2f}x{mfu_text:>8}")
                results[(model, name)] = rate
            print(f"{'':<15}({time.perf_counter() - t0:.0f} s)", flush=True)
        del loader
    return results


if __name__ == "__main__":
    main()
