"""Micro-batching: the photos of concurrent requests go through the model together.

One model call on 16 crops costs far less than 16 calls on one (the network's fixed costs, and
the CPU's cores filled by one large matrix product instead of idling on small ones). Requests
put their photos on one queue; one worker thread takes the first photo waiting, then whatever
else arrives within `max_wait_ms` (up to `max_batch` photos), and runs them through
`Recognizer.embed_stream` at once. Each photo has its own Future: a photo that cannot be read or
searched fails its own Future only. The worker is the only thread that runs the model, so the
Recognizer is never called from two threads at once.
"""

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future

from facelab.align.detect import Face
from facelab.errors import FacelabError
from facelab.recognize.photos import Photo
from facelab.recognize.recognizer import Recognizer

log = logging.getLogger(__name__)
_STOP = object()  # put on the queue by close(): the worker ends when it reaches it


class Batcher:
    """Embeds photos submitted from any thread, in batches (module docstring).

    `submit(photo)` returns a Future of the photo's faces (Recognizer.embed's answer) or of the
    FacelabError saying why it cannot be read. `close()` refuses new photos, finishes the ones
    already queued and stops the worker. `sizes` holds the sizes of the last 1000 batches.
    """

    def __init__(self, recognizer: Recognizer, max_batch: int = 16, max_wait_ms: float = 5.0,
                 crops_per_call: int = 64) -> None:
        if max_batch < 1:
            raise FacelabError(f"max_batch must be >= 1, got {max_batch}")
        if not max_wait_ms >= 0:
            raise FacelabError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.recognizer, self.max_batch = recognizer, int(max_batch)
        self.max_wait, self.crops_per_call = max_wait_ms / 1000.0, int(crops_per_call)
        self.sizes: deque[int] = deque(maxlen=1000)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # makes "closed?" and "put" one step against close()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="facelab-batcher", daemon=True)
        self._worker.start()

    def submit(self, photo: Photo) -> "Future[list[Face]]":
        """Queue one photo; its Future resolves to its faces, main face first ([] for none)."""
        future: Future[list[Face]] = Future()
        with self._lock:
            if self._closed:
                raise FacelabError("the batcher is closed")
            self._queue.put((photo, future))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new photos, embed those already queued, and stop the worker; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._worker.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True  # after this batch: everything queued before close() is served
                    break
                batch.append(item)
            self._embed(batch)

    def _embed(self, batch: list[tuple[Photo, Future]]) -> None:
        """Embed one batch and resolve its Futures; a failure of the whole call (not one
        photo's) fails every Future of the batch, and the worker goes on."""
        batch = [(p, f) for p, f in batch if f.set_running_or_notify_cancel()]  # not cancelled
        if not batch:
            return
        self.sizes.append(len(batch))
        try:
            answers = self.recognizer.embed_stream([p for p, _ in batch], self.crops_per_call)
            for (_, future), (_, faces) in zip(batch, answers, strict=True):
                if isinstance(faces, FacelabError):
                    future.set_exception(faces)
                else:
                    future.set_result(faces)
        except Exception as e:  # noqa: BLE001 - told to every waiting request, logged once
            log.error("embedding a batch of %d photo(s) failed", len(batch), exc_info=e)
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
