"""IJB per-image features: decode+align rate (0, 1, 2 workers) and the whole extraction against the model alone.

Data: an IJB-format folder written by tests.references.ijb_fixture.write_ijb_fixture (`--images`
aligned 112×112 crops: a smooth random pattern per subject plus pixel noise, `--per-subject` images
each, pasted into `--loose-size`² "loose crops" by a random similarity and saved as JPEG q95, with their
5 landmarks in `*_name_5pts_score.txt`), read back with read_ijb_meta. Measured in one run, images/s each:
  decode+align: facelab.eval.protocols.ijb.features._aligned_windows (read_image + align_face in `workers` spawned
    processes, 0 = in this process; `--window` crops at a time, the next window loading meanwhile) over the
    job list extract_features builds, consumed with nothing else to do. The rate is over the windows after
    the first (steady state), up to the last window's arrival; the first window's time (spawning the pool
    included) and the pool's shutdown after the last window are printed apart.
  model alone (the baseline): facelab.eval.embed.forward_batches with flip (f(x) and f(flip x), as the IJB
    features use it) of `--model` freshly initialised (seed 0), eval mode, no_grad, fp32 as extract_features
    runs it, batch `--batch-size`, on the crops decode+align produced, already in memory; after two warm-up
    batches. It includes the host-to-device copy and the copy of the features back, as in the pipeline.
  end to end: facelab.eval.protocols.ijb.extract_features(model, meta, workers=w, window=`--window`) per worker count,
    the wall time of the whole call, so it pays the pool's start-up and shutdown once, like a real run: at a
    few hundred crops those seconds (spawned workers import torch) dominate, over a real IJB run they vanish.
Prints decode+align / model per worker count, PASS where >= 1 (the decoders keep up with the model; with 0
workers decoding is serial with the model, so the pipeline cannot reach the model's rate whatever the
ratio), and end to end / model (how close the pipeline comes to the model's rate). Each figure is the best
of `--repeats` runs. On CUDA every timing is synchronised (forward_batches also copies each batch back).
Defaults per device: CPU `--model tiny` (iresnet50 with flip runs ~6 images/s on 2 cores: no sensible
baseline), batch 64, 384 images, window 64, ~1 min on 2 cores; there the decode workers and the model
share the cores, so end to end is a smoke figure. CUDA: iresnet50, batch 256, 2048 images, window 512.
Real IJB loose crops vary in size; decode cost grows with their pixel count, so set `--loose-size` to the
data's (the default 256 is a round guess, not a measured IJB figure).

    python -m bench.bench_ijb_features [--device cuda --workers 0 2 4 8 --images 4096]
"""

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tests.references.ijb_fixture import write_ijb_fixture

from bench.bench_throughput import device_defaults, sync
from facelab.backbones import build_backbone
from facelab.data.transforms import check_preprocess
from facelab.eval.embed import eval_mode, forward_batches
from facelab.eval.protocols.ijb import extract_features, read_ijb_meta
from facelab.eval.protocols.ijb.features import _aligned_windows

CPU_DEFAULTS = {"model": "tiny", "batch_size": 64, "images": 384, "window": 64}
GPU_DEFAULTS = {"model": "iresnet50", "batch_size": 256, "images": 2048, "window": 512}


def make_faces(images: int, per_subject: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Aligned RGB uint8 crops [N, 112, 112, 3] (N = `images` rounded up to whole subjects) and ids [N]."""
    rng = np.random.default_rng(seed)
    subjects = -(-images // per_subject)
    bases = rng.uniform(0, 255, (subjects, 14, 14, 3)).astype(np.float32)
    crops, ids = [], []
    for s in range(subjects):
        base = cv2.resize(bases[s], (112, 112), interpolation=cv2.INTER_CUBIC)
        for _ in range(per_subject):
            crops.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
            ids.append(s)
    return np.stack(crops), np.array(ids)


def make_model(name: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """`name` backbone (512-d) freshly initialised from `seed`, on `device`, in eval mode."""
    torch.manual_seed(seed)
    return build_backbone(name).to(device).eval()


def stage_jobs(meta, preprocess: dict | None = None) -> list:
    """The (path, landmarks, template, size) jobs extract_features hands to _aligned_windows."""
    pre = check_preprocess(preprocess)
    crops = meta.root / "loose_crop"
    return [(str(crops / n), meta.landmarks[i], pre["template"], pre["size"]) for i, n in enumerate(meta.names)]


def decode_rate(jobs: list, window: int, workers: int) -> tuple[float, float, float, np.ndarray]:
    """(steady images/s over the windows after the first, seconds to the first window (pool start-up
    included), seconds to close the generator after the last window (pool shutdown), aligned crops)."""
    count = -(-len(jobs) // window)
    t0 = time.perf_counter()
    windows = _aligned_windows(jobs, window, workers)
    out = [next(windows)]
    t1 = time.perf_counter()
    out.extend(next(windows) for _ in range(count - 1))
    t2 = time.perf_counter()
    assert next(windows, None) is None  # runs the generator's finally: the pool shuts down
    t3 = time.perf_counter()
    rest = len(jobs) - len(out[0])
    rate = rest / (t2 - t1) if rest else len(jobs) / (t2 - t0)
    return rate, t1 - t0, t3 - t2, np.concatenate(out)


def model_rate(model, aligned: np.ndarray, pre: dict, device: torch.device, batch_size: int) -> float:
    """Images/s of forward_batches with flip over `aligned` (in memory), after two warm-up batches."""
    with eval_mode(model):
        for _ in range(2):  # CPU: the first calls at a new shape build the oneDNN kernels
            forward_batches(model, aligned[:batch_size], pre, device, batch_size, True)
        sync(device)
        t0 = time.perf_counter()
        forward_batches(model, aligned, pre, device, batch_size, True)
        sync(device)
    return len(aligned) / (time.perf_counter() - t0)


def end_to_end(model, meta, batch_size: int, device: torch.device, workers: int, window: int):
    """(images/s of the whole extract_features call, its (f(x), f(flip x)))."""
    sync(device)
    t0 = time.perf_counter()
    feats = extract_features(model, meta, batch_size=batch_size, device=device, workers=workers, window=window)
    sync(device)
    return len(meta.names) / (time.perf_counter() - t0), feats


def _best(fn, repeats: int):
    """fn() `repeats` times; the result whose first element (a rate) is highest."""
    return max((fn() for _ in range(repeats)), key=lambda r: r[0] if isinstance(r, tuple) else r)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_ijb_features", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="backbone; default: tiny on CPU, iresnet50 on GPU")
    p.add_argument("--batch-size", type=int, default=None, help="model batch; default: 64 on CPU, 256 on GPU")
    p.add_argument("--images", type=int, default=None, help="fixture size; default: 384 on CPU, 2048 on GPU")
    p.add_argument("--window", type=int, default=None, help="crops per window; default: 64 on CPU, 512 on GPU")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-subject", type=int, default=8, help="images per subject in the fixture")
    p.add_argument("--loose-size", type=int, default=256, help="loose crop side in pixels")
    p.add_argument("--repeats", type=int, default=1, help="runs per figure, best kept")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads in this process")
    p.add_argument("--fixture", type=Path, default=None, help="write (and keep) the fixture here")
    return device_defaults(p.parse_args(argv), CPU_DEFAULTS, GPU_DEFAULTS)


def run(args: argparse.Namespace, root: Path) -> dict:
    device = torch.device(args.device)
    images, ids = make_faces(args.images, args.per_subject)
    t0 = time.perf_counter()
    write_ijb_fixture(root, images, ids, templates_per_subject=2, loose_size=args.loose_size)
    meta = read_ijb_meta(root)
    n = len(meta.names)
    print(
        f"device {device}, {args.threads} threads; fixture: {n} loose crops {args.loose_size}² JPEG "
        f"({len(np.unique(ids))} subjects, written in {time.perf_counter() - t0:.1f} s), window {args.window}"
    )
    pre = check_preprocess(None)
    jobs = stage_jobs(meta, pre)
    decode, first, close, aligned = {}, {}, {}, None
    for w in args.workers:
        decode[w], first[w], close[w], aligned = _best(lambda w=w: decode_rate(jobs, args.window, w), args.repeats)
    model = make_model(args.model, device)
    model_ips = _best(lambda: model_rate(model, aligned, pre, device, args.batch_size), args.repeats)
    print(f"model alone: {args.model} fp32 eval, batch {args.batch_size}, with flip: {model_ips:8.1f} images/s")
    print("decode+align (_aligned_windows, steady state after the first window):")
    for w in args.workers:
        ratio = decode[w] / model_ips
        print(
            f"  workers {w}: {decode[w]:8.1f} images/s  {ratio:6.2f}x model  {'PASS' if ratio >= 1 else 'FAIL'}"
            f"  (first window {first[w]:.2f} s, shutdown {close[w]:.2f} s)",
            flush=True,
        )
    print("end to end (extract_features, whole call):")
    e2e, feats = {}, {}
    for w in args.workers:
        e2e[w], feats[w] = _best(
            lambda w=w: end_to_end(model, meta, args.batch_size, device, w, args.window), args.repeats
        )
        print(f"  workers {w}: {e2e[w]:8.1f} images/s  {e2e[w] / model_ips:6.2f}x model", flush=True)
    return {
        "images": n,
        "model": model_ips,
        "decode": decode,
        "first_window_s": first,
        "shutdown_s": close,
        "end_to_end": e2e,
        "features": feats,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.fixture is not None:
        return run(args, args.fixture)
    with tempfile.TemporaryDirectory(prefix="facelab-bench-") as tmp:
        return run(args, Path(tmp) / "IJBC")


if __name__ == "__main__":
    main()
