"""Embedding a face on CPU (facelab.recognize.runtime): ms per face of the model alone, three paths in one run.

Speed part, per model (`--models`, random init, seed 0, 512-d, 112×112) and batch size (`--batch-sizes`): the
input is already a preprocessed float32 tensor [B, 3, 112, 112] (no decoding, detection or alignment), and
each path maps it to raw embeddings [B, d]:
  torch eager fp32 (the baseline): the backbone as built, eval mode, no_grad;
  facelab auto: `prepare(model, "auto")`, facelab's default CPU path (bf16 on a CPU with native bf16; else
    torch fp32 or onnxruntime fp32, whichever `prepare` timed faster); the precision it chose is printed;
  onnxruntime fp32: the backbone exported in memory by facelab's exporter (runtime.onnx_embedder: facelab.export,
    checked against torch) in an onnxruntime CPU session (facelab.onnx_model.open_session, torch's thread count).
  facelab fp32 (only where auto is not it): `prepare(model, "fp32")`, facelab's torch float32 path (BatchNorm folded
    into the convolutions, channels_last), to show what it gives over eager and what auto weighed.
Each path gets `--warmup` untimed calls per batch size, then `--repeats` timed rounds in which the paths take
turns (the order rotating each round), so a change of the machine's load falls on all of them; a call under
1 s is preceded by 0.1 s of untimed calls, so that the other runtime's thread pool has stopped spinning and
this one's is awake (timed_rounds); the figure is the median per call / B, with the fastest and slowest call
beside it. "vs onnxruntime" is onnxruntime's ms per
face / the path's (higher is faster), at the same batch. Targets: on a CPU with native bf16, auto >= 2x
onnxruntime fp32; on others, auto never slower than it (1x; PASS by construction when auto *is* onnxruntime).
Absolute times on a shared machine are smoke figures; the ratios are what the run measures.

Accuracy part (`--accuracy` alone, `--no-accuracy` to skip; in the default run, ~1 min): the demo model
(`--run`, default runs/demo, facelab.model.load_model) on the validation pair sets (`--pairs`, default
data/synth/pairs/*.bin, facelab.data.pairsets.load_bin), 10-fold accuracy with flip as PROTOCOLS["pairs"] and the
training loop compute it (embed_images, then verify_pairs): the plain fp32 model against the auto path, with how
far auto moved the pairs' squared distances. Target |difference| <= 0.1 point per set. Skipped, saying why,
when the run or the pair sets are missing.

End-to-end part (in the default run): faces per second of `Recognizer.embed_many` over a folder of real
photographs written as JPEG files (scikit-image's astronaut and camera, matplotlib's Grace Hopper, a collage of
the three, each also turned by ±20° and halved: 15 photos, 21 faces), i.e. decode, MTCNN detection, alignment
and embedding, per model and batch size, for three recognizers: torch eager fp32 (the model as built), facelab's
default (precision auto) and onnxruntime fp32 (the model's `facelab export`), and detection alone
(`Recognizer.detect` on every photo) to show what the model adds to it; median of E2E_ROUNDS passes, the
recognizers taking turns.

To emulate a CPU without native bf16, run it with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 in the
environment (torch's kernels held to AVX2; onnxruntime is not held: it keeps this CPU's AVX-512).

    python -m bench.bench_embed [--models mobilefacenet iresnet50] [--batch-sizes 1 32] [--repeats N] [--threads 2]
                                [--parts speed end-to-end accuracy]
"""

import argparse
import glob
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from tests.references import photos

from facelab.backbones import build_backbone
from facelab.config import config_from_dict, config_to_dict
from facelab.data.pairsets import load_bin
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.protocols.verification import pair_distances, verify_pairs
from facelab.export import export_onnx
from facelab.io import encode_image
from facelab.model import build_model, load_model, save_checkpoint
from facelab.recognize import Recognizer, runtime

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mobilefacenet", "iresnet50")
REPEATS = {"iresnet50": 3}  # default timed rounds per model (others: DEFAULT_REPEATS); iresnet50 is ~20x slower
DEFAULT_REPEATS = 7
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
EAGER, AUTO, FP32, ORT = "torch eager fp32", "facelab auto", "facelab fp32", "onnxruntime fp32"
TARGET_NATIVE, TARGET_OTHER = 2.0, 1.0  # auto vs onnxruntime fp32, same batch
ACCURACY_TARGET = 0.1  # points
PARTS = ("speed", "end-to-end", "accuracy")
E2E_ROUNDS = 3  # passes over the photo folder per path and batch (end-to-end part)
SWITCH_S, LONG_CALL_S = runtime.SWITCH_S, 1.0  # untimed calls before each timed one (timed_rounds)


def cpu_report() -> list[str]:
    """Lines describing the CPU: model name, the flags that matter here, what torch runs at, native bf16."""
    name = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = runtime.cpu_flags()
    have = " ".join(f"{f}{'+' if f in flags else '-'}" for f in FLAGS) if flags else "unreadable"
    caps = {v: os.environ[v] for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if v in os.environ}
    capability = torch.backends.cpu.get_cpu_capability()
    return [
        f"CPU: {name} ({platform.machine()}), {os.cpu_count()} logical CPUs; flags: {have}",
        f"torch {torch.__version__} kernels: {capability}; env caps: {caps or 'none'}; native bf16: "
        f"{runtime.native_bf16()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by the whole machine, by this process) so far: busy time from /proc/stat (user, nice,
    system, irq, softirq, steal) and this process's own from getrusage; None where /proc/stat is unreadable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7) if i < len(fields)) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


def others_load(before: tuple[float, float] | None, wall: float) -> str:
    """How many CPUs other processes (and the hypervisor's steal) kept busy on average since `before`."""
    after = cpu_seconds()
    if before is None or after is None or wall <= 0:
        return "load of other processes unknown"
    other = (after[0] - before[0]) - (after[1] - before[1])
    return f"other processes kept {max(other, 0.0) / wall:.2f} of {os.cpu_count()} CPUs busy meanwhile"


def timed_rounds(paths: dict[str, Callable], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each path on x: `repeats` rounds after `warmup` untimed calls each. Within a round the
    paths take turns, starting one further along each round, so a drift of the machine's load falls on all of
    them. Before each timed call a path whose call is short (< LONG_CALL_S) makes untimed calls for SWITCH_S (one
    at least): after its last call a runtime's thread pool goes on working, onnxruntime's spinning for ~40 ms,
    torch's OpenMP threads ~8 ms (runtime._median_seconds), slowing the other runtime's next calls several
    fold on 2 cores; a batch job calls one path back to back. A long call pays at most those ms once."""
    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    short = dict.fromkeys(names, True)
    with torch.no_grad():
        for name in names:
            for _ in range(warmup):
                start = time.perf_counter()
                paths[name](x)
                short[name] = time.perf_counter() - start < LONG_CALL_S
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                while short[name] and time.perf_counter() - start < SWITCH_S:
                    paths[name](x)
                start = time.perf_counter()
                paths[name](x)
                times[name].append(time.perf_counter() - start)
    return times


def build_paths(name: str, onnx_ok: bool) -> tuple[dict[str, Callable], str, float]:
    """({path: module}, the precision auto chose, seconds spent preparing) for backbone `name`."""
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    t0 = time.perf_counter()
    auto, used = runtime.prepare(model, "auto")
    paths = {EAGER: model, f"{AUTO} ({used})": auto}
    if used != runtime.FP32:  # where auto is not it, facelab's torch fp32 path too: what folding etc. give
        paths[FP32] = runtime.prepare(model, "fp32")[0]
    if used == runtime.ONNXRUNTIME_FP32:
        paths[ORT] = auto  # the same session: timed twice, the two rows show the noise of the measurement
    elif onnx_ok:
        paths[ORT] = runtime.onnx_embedder(model)
    return paths, used, time.perf_counter() - t0


def bench_speed(args: argparse.Namespace) -> list[dict]:
    onnx_ok = runtime.onnx_installed()
    if not onnx_ok:
        print("onnxruntime / onnx / onnxscript not installed: no onnxruntime path, no ratios")
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        paths, used, setup = build_paths(name, onnx_ok)
        t1, before = time.perf_counter(), cpu_seconds()
        print(f"{name}: auto chose {used}; preparing auto and the onnxruntime export took {setup:.1f} s", flush=True)
        repeats = args.repeats or REPEATS.get(name, DEFAULT_REPEATS)
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch))  # [B, 3, 112, 112]
            times = timed_rounds(paths, x, args.warmup, repeats)
            ms = {p: 1e3 * statistics.median(t) / batch for p, t in times.items()}
            for path, t in times.items():
                ratio = ms[ORT] / ms[path] if ORT in ms else None
                rows.append({"model": name, "batch": batch, "path": path, "ms": ms[path], "ratio": ratio,
                             "min": 1e3 * min(t) / batch, "max": 1e3 * max(t) / batch, "repeats": repeats,
                             "auto_is_ort": used == runtime.ONNXRUNTIME_FP32, "used": used})
        print(f"{name}: {time.perf_counter() - t0:.0f} s; while timing, {others_load(before, time.perf_counter() - t1)}",
              flush=True)
    return rows


def print_speed(rows: list[dict], native: bool) -> None:
    print("\n| model | batch | path | ms per face (median) | fastest-slowest | vs onnxruntime fp32 |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "n/a"
        print(f"| {r['model']} | {r['batch']} | {r['path']} | {r['ms']:.2f} | {r['min']:.2f}-{r['max']:.2f} | {ratio} |")
    goal = TARGET_NATIVE if native else TARGET_OTHER
    what = "native bf16: auto >= 2x onnxruntime fp32" if native else "no native bf16: auto never slower than onnxruntime fp32"
    print(f"\ntarget ({what}):")
    for r in rows:
        if not r["path"].startswith(AUTO) or r["ratio"] is None:
            continue
        if r["auto_is_ort"]:
            verdict = f"PASS (auto is onnxruntime itself; measured {r['ratio']:.2f}x, the noise of two timings)"
        else:
            verdict = f"{'PASS' if r['ratio'] >= goal else 'FAIL'} ({r['ratio']:.2f}x, {r['used']})"
        print(f"  {r['model']} batch {r['batch']}: {verdict}")


def bench_accuracy(args: argparse.Namespace) -> dict | None:
    """{set: {"fp32", "auto", "std", "mean_dd", "max_dd"}} of the demo model (accuracies in %), or None when its run
    or pair sets are missing. Each set is embedded once per path with embed_images (flip, L2-normalised) and scored
    with verify_pairs, which is what PROTOCOLS["pairs"] does; the embeddings also give how far the auto path moved
    each pair's squared distance (insightface's threshold grid steps by 0.01)."""
    run = Path(args.run)
    pairs = sorted(glob.glob(str(Path(args.pairs))))
    if not (run / "checkpoint.pt").is_file() and not run.is_file():
        print(f"\naccuracy: skipped: no demo run at {run} (make one with `facelab demo`)")
        return None
    if not pairs:
        print(f"\naccuracy: skipped: no pair sets match {args.pairs}")
        return None
    try:
        model, preprocess = load_model(run)
        sets = {Path(p).stem: load_bin(Path(p)) for p in pairs}
    except FacelabError as e:
        print(f"\naccuracy: skipped: {e}")
        return None
    auto, used = runtime.prepare(model, "auto")
    seconds, emb = {}, {}
    for path, net in (("fp32", model), ("auto", auto)):
        t0 = time.perf_counter()
        emb[path] = {n: embed_images(net, images, batch_size=256, preprocess=preprocess) for n, (images, _) in sets.items()}
        seconds[path] = time.perf_counter() - t0
    n_pairs = sum(len(same) for _, same in sets.values())
    print(f"\naccuracy: demo model {run} ({n_pairs} pairs in {len(sets)} sets, flip, insightface 10 folds): plain fp32 "
          f"({seconds['fp32']:.0f} s to embed) vs auto = {used} ({seconds['auto']:.0f} s)")
    if used != runtime.BF16:
        print(f"  (auto chose {used} on this CPU: the bf16 figure needs a CPU with native bf16)")
    print(f"\n| pair set | fp32 accuracy (%) | auto ({used}) accuracy (%) | difference (points) | fp32 10-fold std "
          f"(points) | mean, max |Δ squared distance| | within {ACCURACY_TARGET} point |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    out = {}
    for name, (_, same) in sets.items():
        res, dist = {}, {}
        for path in ("fp32", "auto"):
            e = emb[path][name]  # [2N, d]
            res[path] = verify_pairs(e[0::2], e[1::2], same)
            dist[path] = pair_distances(e[0::2], e[1::2])  # [N]
        a, b = 100 * res["fp32"]["accuracy"], 100 * res["auto"]["accuracy"]
        dd = np.abs(dist["auto"] - dist["fp32"])
        ok = abs(b - a) <= ACCURACY_TARGET + 1e-9
        print(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {100 * res['fp32']['accuracy_std']:.2f} | "
              f"{dd.mean():.1e}, {dd.max():.1e} | {'PASS' if ok else 'FAIL'} |")
        out[name] = {"fp32": a, "auto": b, "std": 100 * res["fp32"]["accuracy_std"], "mean_dd": float(dd.mean()),
                     "max_dd": float(dd.max()), "used": used}
    return out


def photo_folder(folder: Path) -> list[Path]:
    """The end-to-end part's photos as JPEG files in `folder` (module docstring)."""
    base = {"astronaut": photos.astronaut(), "hopper": photos.hopper(),
            "camera": np.repeat(photos.camera()[:, :, None], 3, 2)}
    base["collage"] = photos.collage(list(base.values()))
    paths = []
    for name, image in base.items():
        variants = {"": image, "_left": photos.rotate_expand(image, 20),
                    "_right": photos.rotate_expand(image, -20),
                    "_half": cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)}
        for suffix, variant in variants.items():
            paths.append(folder / f"{name}{suffix}.jpg")
            paths[-1].write_bytes(encode_image(variant))
    return paths[:15]  # the halved collage's faces are below MTCNN's 20 px: left out


def recognizers(name: str, folder: Path) -> dict[str, object]:
    """{path: Recognizer} for backbone `name` (random init, seed 0), no threshold needed."""
    cfg = config_from_dict({"model": {"backbone": name}})
    torch.manual_seed(0)
    save_checkpoint(folder / name / "checkpoint.pt", {
        "model": build_model(cfg).eval().state_dict(), "config": config_to_dict(cfg),
        "preprocess": {}})
    out = {AUTO: Recognizer.load(folder / name)}
    eager = Recognizer.load(folder / name, precision="fp32")
    eager.net = load_model(folder / name)[0]  # the model as built: no folding, no channels_last
    out[EAGER] = eager
    if runtime.onnx_installed():
        export_onnx(folder / name, folder / f"{name}.onnx")
        out[ORT] = Recognizer.load(folder / f"{name}.onnx")
    return out


def bench_end_to_end(args: argparse.Namespace) -> list[dict]:
    """Faces per second of Recognizer.embed_many over the photo folder, per model, batch and path:
    the median of E2E_ROUNDS passes, the paths (and detection alone) taking turns in each round."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        paths = photo_folder(Path(tmp))
        for name in args.models:
            recs = recognizers(name, Path(tmp))
            first = next(iter(recs.values()))
            faces = sum(len(first.detect(p)) for p in paths)  # also the detector's warm-up
            print(f"\nend to end, {name}: {len(paths)} photos, {faces} faces", flush=True)
            for batch in args.batch_sizes:
                jobs = {"decode + detect alone": lambda d=first: [d.detect(p) for p in paths]}
                for path, rec in recs.items():
                    rec.embed_many(paths[:2], batch_size=batch)  # warm-up
                    jobs[f"{path} ({rec.precision})"] = (
                        lambda rec=rec, b=batch: rec.embed_many(paths, batch_size=b))
                seconds: dict[str, list[float]] = {job: [] for job in jobs}
                for _ in range(E2E_ROUNDS):
                    for job, run in jobs.items():
                        t0 = time.perf_counter()
                        run()
                        seconds[job].append(time.perf_counter() - t0)
                for job, t in seconds.items():
                    rows.append({"model": name, "batch": batch, "path": job,
                                 "faces_per_s": faces / statistics.median(t),
                                 "range": (faces / max(t), faces / min(t))})
    print(f"\n| model | batch | path | faces/s end to end (median of {E2E_ROUNDS}) | slowest-fastest |")
    print("| --- | ---: | --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['path']} | {r['faces_per_s']:.1f} | "
              f"{r['range'][0]:.1f}-{r['range'][1]:.1f} |")
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_embed", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed rounds per batch size; default {DEFAULT_REPEATS} ({REPEATS} for the slow models)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per path and batch size")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (onnxruntime follows)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    p.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="the demo run (accuracy part)")
    p.add_argument("--pairs", default=str(ROOT / "data" / "synth" / "pairs" / "*.bin"),
                   help="glob of the validation pair sets (accuracy part)")
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes) or (args.repeats is not None and args.repeats < 1) or args.warmup < 0:
        p.error("batch sizes and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)  # before any onnxruntime session: they take torch's count
    for line in cpu_report():
        print(line)
    print(f"threads {args.threads}, warm-up {args.warmup} call(s) per path and batch, median of the timed rounds")
    results: dict = dict.fromkeys(PARTS)
    if "speed" in args.parts:
        rows = bench_speed(args)
        print_speed(rows, runtime.native_bf16())
        results["speed"] = rows
    if "end-to-end" in args.parts:
        results["end-to-end"] = bench_end_to_end(args)
    if "accuracy" in args.parts:
        results["accuracy"] = bench_accuracy(args)
    return results


if __name__ == "__main__":
    main()
