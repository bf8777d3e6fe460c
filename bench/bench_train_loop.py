"""facelab.train.loop.train end to end (tiny backbone) on a JPEG folder with loader workers and short epochs.

Measures what the loop itself costs around the model: the loader (workers started per epoch or once),
host-device syncs, logging. 64 images in batches of 16 = 4 steps per epoch, `--steps` steps, 2 workers,
log every 10 steps. Prints the run's images/s (metrics.json, training time only) and the wall time.
Runs against whichever facelab is on PYTHONPATH, so the same command measures a change before and after:

    PYTHONPATH=src python -m bench.bench_train_loop
"""

import argparse
import tempfile
import time
from pathlib import Path

from bench.jpeg_data import make_jpeg_folder
from facelab.config import config_from_dict
from facelab.train.loop import train


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.bench_train_loop", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facelab-bench-") as tmp:
        folder = make_jpeg_folder(Path(tmp) / "train", 8, 8)
        cfg = config_from_dict({
            "output": str(Path(tmp) / "run"),
            "data": {"train": str(folder), "batch_size": 16, "workers": args.workers},
            "model": {"backbone": "tiny", "embedding_size": 128},
            "head": {"margin": "arcface", "kwargs": {"s": 32.0, "m": 0.5}},
            "train": {"steps": args.steps, "log_every": 10, "checkpoint_every": 10**6, "progress": False,
                      "tensorboard": False, "threads": args.threads, "device": args.device},
        })
        t0 = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t0
    rate = summary["train"]["images_per_second"]
    print(f"tiny, batch 16, 4 steps/epoch, {args.steps} steps, {args.workers} workers: "
          f"{rate:.1f} images/s (training time), {wall:.1f} s wall")
    return {"images_per_second": rate, "wall_s": wall}


if __name__ == "__main__":
    main()
