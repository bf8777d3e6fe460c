"""The worker pool every synthetic generator renders in (training photos, pair sets, multi-dataset).

Rendering is pure numpy/OpenCV on one photo at a time, so it scales over processes, each held to one
thread (several threads per process would only compete for the same cores). Results come back in
job order, so the output does not depend on the number of workers.
"""

import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import cv2

from facelab.io import die_with_parent, fork_safe_cv2


def init_worker() -> None:
    """Pool initializer: one thread per worker process for every library that has a pool; the
    worker ends with its parent, however the parent ends."""
    die_with_parent()
    _one_thread()


def _one_thread() -> None:
    cv2.setNumThreads(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:  # a forked worker of a process that uses torch: one thread too
        sys.modules["torch"].set_num_threads(1)


def parallel_map(fn: Callable, jobs: list, workers: int) -> Iterable:
    """Ordered map over `jobs`, in this process (workers == 1) or in a pool of one-thread worker
    processes."""
    if workers <= 1 or len(jobs) <= 1:
        _one_thread()
        return map(fn, jobs)
    # fork where the platform has it (no __main__ guard needed in user scripts; workers never
    # touch torch)
    ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with fork_safe_cv2():  # the workers are forked by the submits in map
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx,
                                   initializer=init_worker)
        return _drain(pool, pool.map(fn, jobs))


def _drain(pool: ProcessPoolExecutor, results: Iterable) -> Iterable:
    with pool:
        yield from results


def pool_workers(workers: int | None) -> int:
    """`workers` if given, else every core this process may use."""
    if workers is not None:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
