"""bench.bench_serve: its answer check catches what it must, and its --quick run serves every
request right."""

import json

import pytest
from tests.references.float_paths import DIST_TOL

from bench import bench_serve  # bench/: a folder of the repository (pytest's pythonpath)
from facelab.align.mtcnn import weights_dir
from facelab.errors import FacelabError

EMBED = {"faces": [{"box": [10.0, 20.0, 50.0, 70.0], "embedding": [0.6, 0.8, 0.0]},
                   {"box": [80.0, 20.0, 99.0, 45.0], "embedding": [0.0, 0.6, 0.8]}]}
VERIFY = {"score": 0.3, "distance": 1.4, "threshold": 1.0, "same": False,
          "a": {"box": [1.0, 2.0, 3.0, 4.0]}, "b": {"box": [5.0, 6.0, 7.0, 8.0]}}


def _changed(answer, path, value):
    """A deep copy of `answer` with the item at `path` (keys and indices) set to `value`."""
    out = json.loads(json.dumps(answer))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_answer_check_passes_float_rounding_and_catches_real_differences():
    assert bench_serve.wrong("/embed", EMBED, EMBED) is None
    rounded = _changed(EMBED, ("faces", 0, "embedding"), [0.6 + DIST_TOL / 2, 0.8, 0.0])
    assert bench_serve.wrong("/embed", rounded, EMBED) is None
    off = _changed(EMBED, ("faces", 0, "embedding"), [0.6 + 3 * DIST_TOL, 0.8, 0.0])
    assert "embedding" in bench_serve.wrong("/embed", off, EMBED)
    assert "faces" in bench_serve.wrong("/embed", {"faces": EMBED["faces"][:1]}, EMBED)
    moved = _changed(EMBED, ("faces", 1, "box", 0), 81.0)
    assert "box" in bench_serve.wrong("/embed", moved, EMBED)

    assert bench_serve.wrong("/verify", VERIFY, VERIFY) is None
    assert "same" in bench_serve.wrong("/verify", _changed(VERIFY, ("same",), True), VERIFY)
    assert "score" in bench_serve.wrong("/verify", _changed(VERIFY, ("score",), 0.31), VERIFY)
    assert "box" in bench_serve.wrong("/verify", _changed(VERIFY, ("b", "box", 3), 9.0), VERIFY)
    # a distance within float rounding of the threshold may fall on either side
    edge = {**VERIFY, "distance": 1.0 + DIST_TOL / 2, "score": 0.5 - DIST_TOL / 4}
    assert bench_serve.wrong("/verify", {**edge, "same": True}, edge) is None


def test_lost_and_refused_requests_are_counted():
    files = {"a.jpg": b"\xff\xd8a", "b.jpg": b"\xff\xd8b"}
    requests = bench_serve.request_list(files, 4, verify_every=2)
    assert [r.path for r in requests] == ["/embed", "/verify", "/embed", "/verify"]
    assert requests[1].photos == ("b.jpg", "a.jpg") and b'name="a"' in requests[1].body
    refs = [EMBED, VERIFY, EMBED, VERIFY]
    answers = [(200, json.dumps(EMBED).encode()), (None, b"ConnectionResetError()"),
               (400, b'{"error": "a: not an image"}'), (200, json.dumps(VERIFY).encode())]
    lost, wrong, first = bench_serve.count_errors(requests, answers, refs)
    assert (lost, wrong) == (1, 1) and "lost" in first


# slow (1.5 min at load 10 on 2 cores: about 80 requests): a benchmark at smoke size. Default
# coverage: the module imports (test_bench_modules.py), the answer check (above); the service
# itself (tests/serve/).
@pytest.mark.slow
def test_quick_run_serves_every_request_right():
    try:
        weights_dir()
    except FacelabError:
        pytest.skip("MTCNN weights not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    pytest.importorskip("skimage")
    out = bench_serve.main(["--quick", "--clients", "1", "4", "--requests", "8",
                            "--verify-every", "4"])
    rows = out["rows"]
    paths = [(r["path"], r["clients"]) for r in rows]
    assert paths == [(bench_serve.DIRECT, 1), (bench_serve.DIRECT_THREAD, 1),
                     (bench_serve.BATCHED, 1), (bench_serve.BATCHED, 4),
                     (bench_serve.UNBATCHED, 1), (bench_serve.UNBATCHED, 4)]
    assert all(r["lost"] == 0 and r["wrong"] == 0 for r in rows), rows
    assert all(r["rate"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows), rows
    # the baselines pool their runs before and after the services
    assert [r["requests"] for r in rows] == [16, 16, 8, 8, 8, 8]
    assert all(r["mean_batch"] == 1.0 for r in rows if r["path"] == bench_serve.UNBATCHED)
