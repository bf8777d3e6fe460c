"""Serving (facelab.serve): requests/s and latency of POST /embed and /verify under concurrent
clients, against the direct API in the same run, every answer checked.

The app (facelab.serve.create_app) runs on a background thread of this process
(facelab.serve.run_in_thread, loopback, a free port) with a small real model: the `tiny`
backbone of tests/references/photos.model_run (random init, 16-d, a stored threshold), MTCNN
detection, precision fp32 unless --precision says otherwise. The photos are the real ones of
tests/references/photos (astronaut, Grace Hopper, camera man, a collage of the three), sent as
JPEG files (512x512 to 845x320 pixels, 75-111 kB).

One request list of `--requests` requests, the same for every path: POST /embed of photo i % 4,
and every `--verify-every`-th a POST /verify of two of them. Paths:
  direct (the baseline): the same requests one by one to the Recognizer (`embed` for /embed,
    `compare` for /verify) in this process's main thread: no HTTP, no JSON;
  direct, on a worker thread: the same, called from a second thread, as the service's batcher
    calls the Recognizer. Not the same cost: torch's OpenMP (libgomp) lets its idle threads
    spin only briefly once the process holds more OpenMP threads than CPUs (here: the main
    thread's team and the worker's), and long otherwise; on 2 CPUs that alone moved the time of
    MTCNN's many small operations by about 1.6x on a quiet machine (long spins won) and 6x on a
    loaded one (they lost), so this row separates it from what HTTP and batching cost;
  both baselines are timed before the services and again after them, the runs pooled (each is
  printed);
  service, batched: the app with its default limits (micro-batching up to Limits.max_batch
    photos, waiting up to max_wait_ms after the first);
  service, max_batch=1: the app with micro-batching off (Limits(max_batch=1)),
each service at 1, 8 and 32 concurrent clients (`--clients`): threads holding one keep-alive
connection each (http.client), taking the next request of the list until none is left. Rates are
requests / wall time of the whole list; latencies per request, p50 and p99 (with 100 requests the
p99 is the second slowest). Ratios: requests/s over each baseline's, and over max_batch=1 at
the same number of clients.

Every answer is checked against the direct path's answer to the same request: status 200, the
same number of faces and boxes (to 1e-3 pixel), embeddings and /verify scores within DIST_TOL
(float32 rounding: a batch of another size may move the last bits), the same decision unless
the distance lies within DIST_TOL of the threshold. `lost` counts requests without an answer
(connection error or timeout), `wrong` answers that differ; both must be 0 (a RuntimeError
otherwise, which `python -m bench` reports). The clients run in the server's process, sharing its interpreter: their own work
(sending prepared bodies, reading the answers; JSON is parsed after the clock stops) is small
beside detection.

    python -m bench.bench_serve [--clients 1 8 32] [--requests 96] [--verify-every 8]
                                [--threads 2] [--precision fp32] [--quick]
"""

import argparse
import http.client
import json
import queue
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from tests.references import photos
from tests.references.float_paths import DIST_TOL

from bench.bench_embed import cpu_report, cpu_seconds, others_load
from facelab.io import encode_image
from facelab.recognize import Recognizer
from facelab.serve import Limits, create_app, run_in_thread

CLIENTS = (1, 8, 32)
REQUESTS = 96
QUICK = {"clients": [1, 8], "requests": 16}  # --quick: a smoke run
VERIFY_EVERY = 8
THRESHOLD = 1.0  # the test model's stored best-accuracy threshold (squared L2 distance)
TIMEOUT_S = 120.0  # one request; a slower answer counts as lost
BOX_TOL = 1e-3  # pixels: detection runs on the same pixels on both paths
DIRECT, DIRECT_THREAD = "direct (Recognizer, one by one)", "direct, on a worker thread"
BATCHED, UNBATCHED = "service", "service, max_batch=1"


@dataclass(frozen=True)
class Request:
    """One request of the list: the endpoint, its multipart body, and the photos it names."""

    path: str  # /embed or /verify
    photos: tuple[str, ...]  # one photo (embed) or two (verify: a, b)
    body: bytes
    content_type: str


def multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data upload of {field: (file name, JPEG)}."""
    boundary = f"bench-{uuid.uuid4().hex}"
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
              f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n').encode() + data + b"\r\n"
             for field, (name, data) in fields.items()]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def photo_files() -> dict[str, bytes]:
    """{name: JPEG bytes} of the real photographs, each at its own size."""
    images = {"astronaut.jpg": photos.astronaut(), "hopper.jpg": photos.hopper(),
              "camera.jpg": photos.camera(),
              "collage.jpg": photos.collage([photos.astronaut(), photos.camera(), photos.hopper()])}
    return {name: encode_image(image, ".jpg") for name, image in images.items()}


def request_list(files: dict[str, bytes], n: int, verify_every: int) -> list[Request]:
    names = list(files)
    out = []
    for i in range(n):
        a = names[i % len(names)]
        if verify_every and i % verify_every == verify_every - 1:
            b = names[(i + 1) % len(names)]
            body, ctype = multipart({"a": (a, files[a]), "b": (b, files[b])})
            out.append(Request("/verify", (a, b), body, ctype))
        else:
            body, ctype = multipart({"image": (a, files[a])})
            out.append(Request("/embed", (a,), body, ctype))
    return out


def direct(rec: Recognizer, files: dict[str, bytes], requests: list[Request]
           ) -> tuple[list[float], float, list[dict]]:
    """The baseline: (latencies, wall seconds, answers) of the requests one by one to the
    Recognizer, answers in the service's JSON form (what they are checked against)."""
    latencies, answers = [], []
    start = time.perf_counter()
    for req in requests:
        t0 = time.perf_counter()
        if req.path == "/embed":
            faces = rec.embed(files[req.photos[0]])
            answer = {"faces": [{"box": f.box.tolist(), "embedding": f.embedding.tolist()}
                                for f in faces]}
        else:
            m = rec.compare(files[req.photos[0]], files[req.photos[1]])
            answer = {"score": m.score, "distance": m.distance, "threshold": m.threshold,
                      "same": m.same, "a": {"box": m.faces[0].box.tolist()},
                      "b": {"box": m.faces[1].box.tolist()}}
        latencies.append(time.perf_counter() - t0)
        answers.append(answer)
    return latencies, time.perf_counter() - start, answers


def timed_direct(rec: Recognizer, files: dict[str, bytes], requests: list[Request],
                 on_thread: bool, when: str) -> tuple[list[float], float, list[dict]]:
    """direct() in this thread, or on a worker thread of its own (the way the service's batcher
    calls the Recognizer), each distinct request once untimed first; its rate and the load of
    other processes printed."""
    warm = list({(r.path, r.photos): r for r in requests}.values())

    def run() -> tuple[list[float], float, list[dict]]:
        direct(rec, files, warm)
        return direct(rec, files, requests)

    before = cpu_seconds()
    if on_thread:
        with ThreadPoolExecutor(1, thread_name_prefix="bench-direct") as pool:
            latencies, wall, answers = pool.submit(run).result()
    else:
        latencies, wall, answers = run()
    print(f"{DIRECT_THREAD if on_thread else DIRECT}, {when}: {len(requests) / wall:.2f} "
          f"requests/s; {others_load(before, wall)}", flush=True)
    return latencies, wall, answers


def send_all(url: str, requests: list[Request], clients: int
             ) -> tuple[list[float], float, list[tuple[int | None, bytes]]]:
    """(latencies, wall seconds, [(status or None when lost, body)]) of the requests sent by
    `clients` threads, each over its own keep-alive connection, taking the next request left."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(requests)):
        todo.put(i)
    latencies = [0.0] * len(requests)
    answers: list[tuple[int | None, bytes]] = [(None, b"")] * len(requests)
    go = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        go.wait()
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            req = requests[i]
            t0 = time.perf_counter()
            try:
                conn.request("POST", req.path, body=req.body,
                             headers={"Content-Type": req.content_type})
                response = conn.getresponse()
                answers[i] = (response.status, response.read())
            except (OSError, http.client.HTTPException) as e:  # lost: a fresh connection
                answers[i] = (None, repr(e).encode())
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
            latencies[i] = time.perf_counter() - t0
        conn.close()

    threads = [threading.Thread(target=client, name=f"bench-client-{c}") for c in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, answers


def _close(a: list, b: list, tol: float) -> bool:
    return len(a) == len(b) and bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= tol))


def wrong(path: str, got: dict, ref: dict) -> str | None:
    """Why the service's answer `got` differs from the direct one `ref`; None when it agrees."""
    if path == "/embed":
        if len(got.get("faces", ())) != len(ref["faces"]):
            return f"{len(got.get('faces', ()))} faces, direct {len(ref['faces'])}"
        for k, (g, r) in enumerate(zip(got["faces"], ref["faces"], strict=True)):
            if not _close(g["box"], r["box"], BOX_TOL):
                return f"face {k}: box {g['box']}, direct {r['box']}"
            if not _close(g["embedding"], r["embedding"], DIST_TOL):
                return f"face {k}: embedding differs by more than {DIST_TOL}"
        return None
    for side in "ab":
        if not _close(got[side]["box"], ref[side]["box"], BOX_TOL):
            return f"{side}: box {got[side]['box']}, direct {ref[side]['box']}"
    for key in ("score", "distance"):
        if abs(got[key] - ref[key]) > DIST_TOL:
            return f"{key} {got[key]}, direct {ref[key]}"
    near = abs(ref["distance"] - ref["threshold"]) <= DIST_TOL  # either side is float rounding
    if got["same"] != ref["same"] and not near:
        return f"same {got['same']}, direct {ref['same']}"
    return None


def count_errors(requests: list[Request], answers: list, refs: list[dict]) -> tuple[int, int, str]:
    """(lost, wrong, the first problem) of a run's answers against the direct ones."""
    lost, bad, first = 0, 0, ""
    for req, (status, body), ref in zip(requests, answers, refs, strict=True):
        if status is None:
            lost += 1
            first = first or f"{req.path} lost: {body.decode(errors='replace')}"
            continue
        why = (f"HTTP {status}: {body[:200].decode(errors='replace')}" if status != 200
               else wrong(req.path, json.loads(body), ref))
        if why:
            bad += 1
            first = first or f"{req.path} {req.photos}: {why}"
    return lost, bad, first


def row(path: str, clients: int, latencies: list[float], wall: float, **extra) -> dict:
    ms = np.asarray(latencies) * 1000.0
    return {"path": path, "clients": clients, "requests": len(latencies),
            "rate": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "lost": 0, "wrong": 0, "mean_batch": None,
            **extra}


def bench_service(rec: Recognizer, gallery: Path, limits: Limits, name: str,
                  requests: list[Request], refs: list[dict], clients: list[int]) -> list[dict]:
    rows = []
    app = create_app(rec, gallery, limits=limits)
    sizes = app.state.service.batcher.sizes  # the sizes of the recent batches
    with run_in_thread(app) as url:
        send_all(url, requests[:2], 1)  # warm-up: the first requests of a fresh app
        for c in clients:
            sizes.clear()
            before = cpu_seconds()
            latencies, wall, answers = send_all(url, requests, c)
            lost, bad, first = count_errors(requests, answers, refs)
            r = row(name, c, latencies, wall, lost=lost, wrong=bad,
                    mean_batch=statistics.fmean(sizes) if sizes else None)
            rows.append(r)
            print(f"{name}, {c} client(s): {r['rate']:.2f} requests/s, p50 {r['p50_ms']:.0f} "
                  f"ms, p99 {r['p99_ms']:.0f} ms, lost {lost}, wrong {bad}; "
                  f"{others_load(before, wall)}", flush=True)
            if first:
                print(f"  first problem: {first}", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    base = {r["path"]: r["rate"] for r in rows if r["path"] in (DIRECT, DIRECT_THREAD)}
    unbatched = {r["clients"]: r["rate"] for r in rows if r["path"] == UNBATCHED}
    print("\n| path | clients | requests | requests/s | p50 ms | p99 ms | vs direct | "
          "vs direct on a worker thread | vs max_batch=1 | mean batch | lost | wrong |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        vs_unbatched = (f"{r['rate'] / unbatched[r['clients']]:.2f}x"
                        if r["path"] == BATCHED and r["clients"] in unbatched else "")
        batch = "" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        print(f"| {r['path']} | {r['clients']} | {r['requests']} | {r['rate']:.2f} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['rate'] / base[DIRECT]:.2f}x | "
              f"{r['rate'] / base[DIRECT_THREAD]:.2f}x | {vs_unbatched} | {batch} | "
              f"{r['lost']} | {r['wrong']} |")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve",
                                description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=None,
                   help=f"concurrent clients, one run each (default {list(CLIENTS)})")
    p.add_argument("--requests", type=int, default=None,
                   help=f"requests per run (default {REQUESTS})")
    p.add_argument("--verify-every", type=int, default=VERIFY_EVERY,
                   help="every N-th request is a /verify (0: none)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--precision", default="fp32", help="Recognizer precision (auto times paths)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: clients {QUICK['clients']}, {QUICK['requests']} requests "
                        "(unless given)")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else {"clients": list(CLIENTS), "requests": REQUESTS}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.requests < 1 or min(args.clients) < 1 or args.verify_every < 0:
        p.error("--requests and --clients must be >= 1, --verify-every >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    for line in cpu_report():
        print(line)
    files = photo_files()
    requests = request_list(files, args.requests, args.verify_every)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        run = photos.model_run(Path(tmp) / "run", {"val": {"accuracy": {"threshold": THRESHOLD}}})
        rec = Recognizer.load(run, precision=args.precision)
        print(f"model: tiny (16-d, random init), precision {rec.precision}, threads "
              f"{args.threads}; {len(requests)} requests "
              f"({sum(r.path == '/verify' for r in requests)} /verify); "
              f"limits {Limits()}", flush=True)
        # the baselines before the services and again after them, the two runs pooled: a drift
        # of the machine's load during the services falls on the baselines too
        base = {on_thread: timed_direct(rec, files, requests, on_thread, "before the services")
                for on_thread in (False, True)}
        refs = base[False][2]
        runs: list[tuple[Limits, str]] = [(Limits(), BATCHED), (Limits(max_batch=1), UNBATCHED)]
        rows = []
        for limits, name in runs:
            rows += bench_service(rec, Path(tmp) / f"gallery-{limits.max_batch}", limits, name,
                                  requests, refs, args.clients)
        for on_thread, name in ((False, DIRECT), (True, DIRECT_THREAD)):
            latencies, wall, _ = base[on_thread]
            again, wall_again, _ = timed_direct(rec, files, requests, on_thread,
                                                "after the services")
            rows.insert(on_thread, row(name, 1, latencies + again, wall + wall_again))
    print_table(rows)
    lost, bad = sum(r["lost"] for r in rows), sum(r["wrong"] for r in rows)
    served = sum(r["requests"] for r in rows if r["path"] in (BATCHED, UNBATCHED))
    print(f"\nlost {lost}, wrong {bad} of {served} service "
          f"requests (must be 0)")
    if lost or bad:  # an Exception: `python -m bench` reports it and goes on to the next
        raise RuntimeError(f"bench_serve: {lost} request(s) lost, {bad} answered wrongly")
    return {"rows": rows, "settings": vars(args)}


if __name__ == "__main__":
    main()
