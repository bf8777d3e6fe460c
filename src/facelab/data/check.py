"""Training-set image checks: find the images that training or a conversion must not use, and say
why.

Every image is decoded strictly (facelab.images: empty, undecodable, or repaired by the decoder are
bad, each with a reason). The check runs once, before any work, in a process pool
(`check_dataset`); the loader's hot path stays on OpenCV alone. A training set is also refused when
fewer than 2 identities are left, and its images must share one size.

A checked dataset provides `encoded(index) -> bytes` (FacelabError naming what could not be read),
`image_name(index) -> str`, `exclude(indices)` and `labels`; image folders also `set_cache(images)`.
"""

import logging
import mmap
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np

from facelab.errors import FacelabError
from facelab.images import NotClean, decode_clean, image_problem
from facelab.io import die_with_parent, fork_safe_cv2

log = logging.getLogger(__name__)

MIN_PARALLEL = 256  # fewer images are checked in this process: a pool costs more than it saves
SHOWN = 3  # bad images named in the error message (all of them go to the run folder with skip_bad)
_FORK = "fork" in multiprocessing.get_all_start_methods()  # workers can share memory with us


class BadImage(NamedTuple):
    """An image left out: its name (file path, or `.rec` file, record key and offset) and why."""

    name: str
    reason: str


class CheckedDataset(Protocol):
    labels: np.ndarray

    def __len__(self) -> int: ...
    def encoded(self, index: int) -> bytes: ...
    def image_name(self, index: int) -> str: ...
    def exclude(self, indices: Iterable[int]) -> None: ...


# ---------------------------------------------------------------- many images, in parallel


def check_workers() -> int:
    """Processes for a check: the cores this process may use, shared between the training processes
    of this machine under torchrun (LOCAL_WORLD_SIZE); 1 in a daemon process, which may not start
    any."""
    if multiprocessing.current_process().daemon:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class Checked(NamedTuple):
    """What check_dataset found: [(index, (H, W, C) shape, or the reason it is bad)] in index order;
    with `keep`, the pixels [N, H, W, 3] of every good image of size `size` (other slots: zeros)."""

    results: list[tuple[int, Any]]
    images: np.ndarray | None = None
    size: tuple[int, int] | None = None


_WORKER: dict[str, Any] = {}  # a pool worker's dataset, and the shared array it writes pixels into


def _init_worker(dataset: CheckedDataset | None, images: np.ndarray | None = None) -> None:
    die_with_parent()  # a convert killed with -9 leaves no workers behind
    cv2.setNumThreads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)  # libpng's own stderr lines name no file; every
    os.dup2(devnull, 2)  # problem comes back as a reason, with the file's name
    _WORKER.update(dataset=dataset, images=images)


def _check_span(span: tuple[int, int]) -> list[tuple[int, Any]]:
    return _check_indices(_WORKER["dataset"], range(*span), _WORKER["images"])


def _check_indices(dataset: CheckedDataset, indices: Iterable[int],
                   images: np.ndarray | None = None) -> list[tuple[int, Any]]:
    """[(index, shape, or the reason it is bad)]; the pixels of the slot's size go into `images`."""
    out: list[tuple[int, Any]] = []
    for i in indices:
        try:
            image = decode_clean(dataset.encoded(i))
        except (FacelabError, NotClean) as e:
            # unreadable (missing file, damaged record), undecodable
            out.append((i, str(e)))
            continue
        if images is not None and image.shape == images.shape[1:]:
            images[i] = image
        out.append((i, image.shape))
    return out


def check_dataset(dataset: CheckedDataset, keep: bool = False, workers: int | None = None,
                  min_parallel: int = MIN_PARALLEL, size: tuple[int, int] | None = None) -> Checked:
    """Decode every image of `dataset` strictly, in `workers` processes (default check_workers()).

    With `keep` (a preload) the pixels of the images of `size` (default: the first good image's) are
    kept: forked pool workers write them straight into memory shared with this process, so a preload
    costs no decoding and no copying beyond the check."""
    n, workers = len(dataset), workers or check_workers()
    parallel = workers > 1 and n >= min_parallel and (_FORK or not keep)
    first: list[tuple[int, Any]] = []
    images = None
    if keep:
        first, size, image = _first_good(dataset, size)
        images = _zeros(n, size, shared=parallel)
        if image is not None and image.shape[:2] == size:
            images[len(first) - 1] = image
    rest = range(len(first), n)
    if not parallel:
        return Checked(first + _check_indices(dataset, rest, images), images, size)
    step = max(32, -(-len(rest) // (workers * 8)))  # several spans per worker: an even finish
    spans = [(a, min(a + step, n)) for a in range(rest.start, n, step)]
    context = multiprocessing.get_context("fork") if images is not None else None
    pool = ProcessPoolExecutor(min(workers, len(spans)), mp_context=context,
                               initializer=_init_worker, initargs=(dataset, images))
    with fork_safe_cv2(), pool:
        parts = list(pool.map(_check_span, spans))
    return Checked(first + [r for part in parts for r in part], images, size)


def _first_good(dataset: CheckedDataset, size: tuple[int, int] | None
                ) -> tuple[list[tuple[int, Any]], tuple[int, int] | None, np.ndarray | None]:
    """Check images in order up to the first good one: ([(index, result)], the size the kept pixels
    have (`size` if given, else that image's), that image)."""
    out: list[tuple[int, Any]] = []
    for i in range(len(dataset)):
        try:
            image = decode_clean(dataset.encoded(i))
        except (FacelabError, NotClean) as e:
            out.append((i, str(e)))
            continue
        out.append((i, image.shape))
        return out, size or image.shape[:2], image
    return out, size, None


def _zeros(n: int, size: tuple[int, int] | None, shared: bool) -> np.ndarray | None:
    """uint8 [n, H, W, 3] zeros; in anonymous shared memory when forked workers fill it (not a file
    under /dev/shm, whose size containers often cap)."""
    if size is None:
        return None
    shape = (n, *size, 3)
    if not shared:
        return np.zeros(shape, np.uint8)
    return np.frombuffer(mmap.mmap(-1, max(1, int(np.prod(shape)))), np.uint8).reshape(shape)


def screen_stream(items: Iterable[Any], data_of: Callable[[Any], bytes], workers: int | None = None,
                  batch: int = 64) -> Iterator[tuple[Any, str | None]]:
    """(item, reason it is bad or None) for every item of a stream, in order; `data_of(item)` gives
    its encoded bytes. Checked in a pool, a bounded number of batches ahead: the stream is read
    lazily, so memory stays small on any amount of data."""
    workers = workers or check_workers()
    if workers <= 1:
        for item in items:
            yield item, image_problem(data_of(item))
        return
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(None, None))
    with fork_safe_cv2(), pool:
        window: list[tuple[list, Future]] = []
        for chunk in _batched(items, batch):
            window.append((chunk, pool.submit(_problems, [data_of(it) for it in chunk])))
            if len(window) > 2 * workers:
                yield from _drain(window.pop(0))
        while window:
            yield from _drain(window.pop(0))


def _problems(datas: list[bytes]) -> list[str | None]:
    return [image_problem(d) for d in datas]


def _drain(entry: tuple[list, Future]) -> Iterator[tuple[Any, str | None]]:
    chunk, future = entry
    yield from zip(chunk, future.result(), strict=True)


def _batched(items: Iterable[Any], n: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------- training sets


def require_identities(labels: np.ndarray, where: str) -> None:
    """FacelabError naming the set if fewer than 2 identities have images: a classifier over one
    class has nothing to tell apart (its loss is 0 from the first step)."""
    found = int(np.unique(labels).size)
    if found < 2:
        raise FacelabError(f"{where}: the training set has {found} "
                           f"identit{'y' if found == 1 else 'ies'} with images; training needs at "
                           "least 2")


def screen_training_set(dataset: CheckedDataset, where: str, skip_bad: bool, preload: bool = False,
                        expected_size: tuple[int, int] | None = None,
                        extra: Sequence[BadImage] = ()) -> list[BadImage]:
    """Check every image of a training set before training; returns the bad ones (also set as
    `dataset.bad_images`).

    Bad: not decoding cleanly, or of another size than `expected_size` (default: the set's most
    common size); `extra` adds bad images found earlier (damaged records a scan left out). Without
    `skip_bad` any bad image is a FacelabError naming how many and the first few; with it they are
    excluded (the labels of the others unchanged). With `preload` the decoded pixels fill the
    dataset's cache (`set_cache`): the check costs no extra decoding."""
    start = time.perf_counter()
    checked = check_dataset(dataset, keep=preload, size=expected_size)
    bad = _bad_indices(checked.results, checked.size or expected_size)
    found = [BadImage(dataset.image_name(i), reason) for i, reason in bad] + list(extra)
    log.info("%s: checked %d images in %.1f s, %d bad", where, len(checked.results),
             time.perf_counter() - start, len(found))
    if found and not skip_bad:
        raise FacelabError(_refusal(where, found))
    dataset.exclude(i for i, _ in bad)
    dataset.bad_images = found
    if checked.images is not None:
        left_out = {i for i, _ in bad}
        keep = [i for i in range(len(checked.images)) if i not in left_out]
        dataset.set_cache(checked.images if not left_out else checked.images[keep])
    return found


def _bad_indices(results: list[tuple[int, Any]],
                 expected: tuple[int, int] | None) -> list[tuple[int, str]]:
    """[(index, reason)]: the undecodable, and those whose size differs from `expected` (else the
    most common size)."""
    shapes = {i: tuple(r)[:2] for i, r in results if not isinstance(r, str)}
    if expected is None and shapes:
        expected = Counter(shapes.values()).most_common(1)[0][0]
    bad = [(i, r) for i, r in results if isinstance(r, str)]
    h, w = expected or (0, 0)
    bad += [(i, f"size {s[1]}x{s[0]} differs from the set's {w}x{h}") for i, s in shapes.items()
            if s != expected]
    return sorted(bad)


def _refusal(where: str, found: list[BadImage]) -> str:
    shown = "; ".join(f"{b.name}: {b.reason}" for b in found[:SHOWN])
    more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    plural = "s" if len(found) > 1 else ""
    return (f"{where}: {len(found)} bad image{plural} ({shown}{more}); fix or remove them, or set "
            "data.skip_bad: true to train without them (listed in the run folder)")
