"""The micro-batcher alone: concurrent submissions are embedded together, each answer equals the
Recognizer's own, a bad photo fails only its own Future, and close() serves what was queued."""

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
from tests.references.float_paths import DIST_TOL

from facelab.errors import FacelabError
from facelab.recognize.photos import load_photo
from facelab.serve.batcher import Batcher


class Counting:
    """A stand-in recognizer: each photo's faces are [photo]; records the batches it saw, and
    raises for the photo "boom" (a failure of the whole call, not of one photo)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls, self.delay = [], delay

    def embed_stream(self, photos, batch_size):
        self.calls.append(list(photos))
        time.sleep(self.delay)
        if "boom" in photos:
            raise RuntimeError("the model failed")
        for i, p in enumerate(photos):
            yield f"photo {i + 1}", (FacelabError(f"photo {i + 1}: bad") if p == "bad" else [p])


def _submit_from_threads(batcher, photos):
    futures, start = [None] * len(photos), threading.Barrier(len(photos))

    def submit(i):
        start.wait()
        futures[i] = batcher.submit(photos[i])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return futures


def test_threads_share_batches_and_get_the_recognizers_answers(rec, pictures, direct):
    names = ["astronaut.jpg", "collage.png", "wall.jpg"] * 2
    arrays = [load_photo(pictures[n]) for n in names]
    batcher = Batcher(rec, max_batch=4, max_wait_ms=500)
    try:
        futures = _submit_from_threads(batcher, arrays)
        got = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    sizes = list(batcher.sizes)
    assert sum(sizes) == len(names) and max(sizes) > 1 and max(sizes) <= 4, sizes
    for name, faces in zip(names, got, strict=True):
        want = direct[name]  # Recognizer.embed, one photo at a time
        assert len(faces) == len(want)
        for a, b in zip(faces, want, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-6)
            np.testing.assert_allclose(a.embedding, b.embedding, atol=DIST_TOL)
            np.testing.assert_array_equal(a.crop, b.crop)


def test_a_bad_photo_fails_only_its_own_future(rec, pictures):
    batcher = Batcher(rec, max_batch=8, max_wait_ms=300)
    try:
        photos = [pictures["wall.jpg"], np.zeros((4, 4), np.float32), b"not an image",
                  pictures["wall.jpg"]]
        futures = [batcher.submit(p) for p in photos]
        assert futures[0].result(60) == [] and futures[3].result(60) == []
        with pytest.raises(FacelabError, match="uint8"):
            futures[1].result(60)
        with pytest.raises(FacelabError, match="cannot decode"):
            futures[2].result(60)
        assert list(batcher.sizes) == [4]  # they were one batch
    finally:
        batcher.close()


def test_a_failed_call_fails_its_batch_and_the_worker_goes_on():
    fake = Counting()
    batcher = Batcher(fake, max_batch=8, max_wait_ms=200)
    try:
        futures = [batcher.submit(p) for p in ("a", "boom", "c")]
        for f in futures:
            with pytest.raises(RuntimeError, match="the model failed"):
                f.result(10)
        assert batcher.submit("d").result(10) == ["d"]
        assert fake.calls == [["a", "boom", "c"], ["d"]]
    finally:
        batcher.close()


def test_batches_respect_max_batch_and_max_wait():
    fake = Counting()
    batcher = Batcher(fake, max_batch=3, max_wait_ms=0)
    try:
        futures = _submit_from_threads(batcher, [str(i) for i in range(20)])
        assert sorted(f.result(10)[0] for f in futures) == sorted(str(i) for i in range(20))
    finally:
        batcher.close()
    assert max(batcher.sizes) <= 3 and sum(batcher.sizes) == 20
    waited = Batcher(Counting(), max_batch=16, max_wait_ms=50)
    try:
        started = time.monotonic()
        assert waited.submit("alone").result(10) == ["alone"]
        assert 0.04 < time.monotonic() - started < 5  # it waited for company, then went
    finally:
        waited.close()


def test_close_serves_what_was_queued_then_refuses():
    fake = Counting(delay=0.05)
    batcher = Batcher(fake, max_batch=2, max_wait_ms=0)
    futures = [batcher.submit(str(i)) for i in range(9)]
    batcher.close()
    assert [f.result(0) for f in futures] == [[str(i)] for i in range(9)]  # done, in order
    assert not batcher._worker.is_alive()
    with pytest.raises(FacelabError, match="closed"):
        batcher.submit("late")
    batcher.close()  # again: nothing happens


def test_a_cancelled_request_is_skipped():
    fake = Counting(delay=0.2)
    batcher = Batcher(fake, max_batch=1, max_wait_ms=0)
    try:
        first = batcher.submit("first")  # keeps the worker busy 0.2 s
        gone: Future = batcher.submit("gone")
        assert gone.cancel()  # its client went away before the worker reached it
        assert batcher.submit("last").result(10) == ["last"]
        assert first.result(0) == ["first"]
        assert ["gone"] not in fake.calls
    finally:
        batcher.close()


def test_bad_settings_are_refused(rec):
    with pytest.raises(FacelabError, match="max_batch"):
        Batcher(rec, max_batch=0)
    with pytest.raises(FacelabError, match="max_wait_ms"):
        Batcher(rec, max_wait_ms=float("nan"))
