"""Loader-only throughput (images/s) for 0, 1 and 2 workers against the model's training rate, same run.

The loader is facelab.data.loader.make_loader over a folder of encoded 112×112 JPEGs (decode, flip,
collate, copy to the device: pinned and non-blocking on CUDA), created once and timed over `--batches`
batches after its first one (worker start-up excluded, as persistent workers pay it once per run). The
model rate is one training step of `--model` (bench_throughput.make_step: bf16 + channels_last on CUDA,
fp32 eager on CPU, where bf16 is slower) on a synthetic batch. Target: loader >= 2x the model rate.
No GPU JPEG decode: torchvision.io.decode_jpeg(device="cuda") would need torchvision, which is not
importable next to this torch build, so decoding stays in the worker processes (OpenCV).

    python -m bench.bench_loader [--device cuda --model iresnet50 --batch-size 256 --workers 0 4 8]
"""

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_throughput import make_step, sync, time_steps
from bench.jpeg_data import make_jpeg_folder
from facelab.data.folder import ImageFolderDataset
from facelab.data.loader import make_loader, to_device
from facelab.data.samplers import EpochBatchSampler

TARGET = 2.0


def loader_rate(dataset, batch_size: int, workers: int, batches: int, device: torch.device) -> float:
    """Images/s of the loader alone, batches moved to `device`, after its first batch."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0)
    loader = make_loader(dataset, sampler, workers, device)
    it = iter(loader)
    to_device(next(it), device)  # start-up: worker processes, first decode
    sync(device)
    t0 = time.perf_counter()
    for batch in itertools.islice(it, batches):
        to_device(batch, device)
    sync(device)
    return batches * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.bench_loader", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--batch-size", type=int, default=32, help="loader batch")
    p.add_argument("--model-batch-size", type=int, default=None, help="default: 2 on CPU, --batch-size on GPU")
    p.add_argument("--batches", type=int, default=10, help="timed loader batches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1, help="timed model steps (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    model_batch = args.model_batch_size or (args.batch_size if cuda else 2)
    variant = "bf16+cl" if cuda else "fp32 eager"

    step, _ = make_step(args.model, variant, device, 1000)
    images = torch.randint(0, 256, (model_batch, 3, 112, 112), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 1000, (model_batch,), device=device)
    model = model_batch / time_steps(step, itertools.repeat((images, labels)), 1, args.steps, device)
    print(f"device {device}; model {args.model} {variant}, batch {model_batch}: {model:.3g} images/s training")
    rates = {}
    with tempfile.TemporaryDirectory(prefix="facelab-bench-") as tmp:
        count = (args.batches + 1) * args.batch_size
        dataset = ImageFolderDataset(make_jpeg_folder(Path(tmp) / "train", 16, -(-count // 16)))
        print(f"loader: {len(dataset)} JPEGs 112×112, batch {args.batch_size}, {args.batches} timed batches; "
              f"target >= {TARGET}x the model rate")
        for workers in args.workers:
            rates[workers] = loader_rate(dataset, args.batch_size, workers, args.batches, device)
            ratio = rates[workers] / model
            verdict = "PASS" if ratio >= TARGET else "FAIL"
            print(f"workers {workers}: {rates[workers]:8.1f} images/s  {ratio:8.1f}x model  {verdict}", flush=True)
    return {"model": model, **{f"workers{w}": r for w, r in rates.items()}}


if __name__ == "__main__":
    main()
