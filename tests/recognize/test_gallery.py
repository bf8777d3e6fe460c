"""facelab.recognize.gallery: the persistent face gallery (SQLite truth, FAISS index derived).

Independent truth: identity templates and cosines recomputed here with numpy in float64, from the
embeddings the test added or read straight from the SQLite file (plain sqlite3, not the
Gallery); compared within DIST_TOL (float32 paths, never exactly). Crash safety: a child process
(gallery_child.py) SIGKILLed inside the write transaction, between the commit and the index save,
and at a random point; concurrency: reader threads with their own connections while a child
process writes.
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from tests.references.float_paths import DIST_TOL

from facelab.errors import FacelabError
from facelab.recognize import gallery as G
from facelab.recognize.gallery import Gallery

D = 16
FP = {"backbone": "iresnet-tiny", "embedding_size": D,
      "preprocess": {"size": [112, 112], "mean": 0.5}, "weights_sha256": "ab" * 32}
CHILD = Path(__file__).with_name("gallery_child.py")
LOGGER = "facelab.recognize.gallery"


def _unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _truth(per_identity):
    """(sorted names, templates float64 [U, d]) from {name: [embeddings [n, d]]}: the mean of the
    L2-normalised embeddings, L2-normalised again."""
    names = sorted(per_identity)
    templates = []
    for name in names:
        x = np.concatenate([np.atleast_2d(e) for e in per_identity[name]]).astype(np.float64)
        m = (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
        templates.append(m / np.linalg.norm(m))
    return names, np.array(templates).reshape(len(names), -1)


def _raw(folder):
    """The database read with plain sqlite3: {name: [vectors]}, [(source, [faces])], generation."""
    con = sqlite3.connect(folder / "gallery.sqlite")
    try:
        per = defaultdict(list)
        for name, blob in con.execute(
            "SELECT i.name, e.vector FROM identities i JOIN photos p ON p.identity_id = i.id "
            "JOIN embeddings e ON e.photo_id = p.id"
        ):
            per[name].append(np.frombuffer(blob, "<f4"))
        photos = defaultdict(list)
        for source, face in con.execute(
            "SELECT p.source, e.face FROM photos p LEFT JOIN embeddings e ON e.photo_id = p.id"
        ):
            photos[source].append(face)
        generation = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        generation = int(generation[0])
        names = [r[0] for r in con.execute("SELECT name FROM identities")]
        return per, photos, generation, names
    finally:
        con.close()


def _dump(folder):
    con = sqlite3.connect(folder / "gallery.sqlite")
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("meta", "identities", "photos", "embeddings")}
    finally:
        con.close()


def _assert_search(gallery, names, templates, queries, k):
    """gallery.search == brute force on the true templates: the scores at each rank, and each
    returned name's true score (tie-proof), within DIST_TOL."""
    got = gallery.search(queries, k)
    sim = queries.astype(np.float64) @ templates.T  # [M, U]
    assert len(got) == len(queries)
    for q, result in enumerate(got):
        assert len(result) == min(k, len(names))
        truth = np.sort(sim[q])[::-1][: len(result)]
        np.testing.assert_allclose([s for _, s in result], truth, rtol=0, atol=DIST_TOL)
        for name, score in result:
            assert abs(sim[q, names.index(name)] - score) <= DIST_TOL
        assert len({n for n, _ in result}) == len(result)


def _index_generation(folder):
    return json.loads((folder / "index" / "generation.json").read_text())["generation"]


def test_add_list_search_remove_reopen(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "g"
    # norms within NORM_TOL of 1, not exactly 1: the template is the mean of the normalised ones
    added = {name: [_unit(rng.standard_normal((n, D)))
                    * rng.uniform(0.993, 1.007, (n, 1)).astype(np.float32) for n in sizes]
             for name, sizes in {"alice": (3, 1), "bob": (2,), "carol": (1, 1, 2)}.items()}
    queries = _unit(rng.standard_normal((7, D)))
    with Gallery.open(folder, FP) as g:
        assert len(g) == 0 and g.identities() == [] and g.index_kind is None
        assert g.search(queries, 3) == [[]] * 7  # empty gallery: no index, no candidates
        assert not (folder / "index").exists()
        for name, embs in added.items():
            photos = [(f"{name}/{i}.jpg", e if len(e) > 1 else e[0]) for i, e in enumerate(embs)]
            assert g.add(name, photos) == sum(len(e) for e in embs)
        assert g.add("bob", [("bob/extra.jpg", added["bob"][0][:1])]) == 1  # existing identity
        added["bob"].append(added["bob"][0][:1])
        listed = g.identities()
        assert [(d["name"], d["photos"], d["embeddings"]) for d in listed] == [
            ("alice", 2, 4), ("bob", 2, 3), ("carol", 3, 4)]
        assert all(isinstance(d["added"], str) and d["added"].endswith("+00:00") for d in listed)
        assert len(g) == 3 and g.index_kind == "exact" and g.generation == 4
        names, templates = _truth(added)
        for k in (1, 2, 5):
            _assert_search(g, names, templates, queries, k)
        assert g.search(queries[:0], 3) == []
        assert g.remove("bob") == 3
        del added["bob"]
        names, templates = _truth(added)
        _assert_search(g, names, templates, queries, 3)
        with pytest.raises(FacelabError, match=r"no identity 'alicia'.*close names: 'alice'"):
            g.remove("alicia")
        with pytest.raises(FacelabError, match="no close names"):
            g.remove("zzzzzz")
        assert g.generation == 5  # refused removes write nothing
    with Gallery.open(folder, FP, create=False) as g:  # reopen: same answers, saved index used
        assert [d["name"] for d in g.identities()] == ["alice", "carol"]
        _assert_search(g, names, templates, queries, 3)
        assert g.remove("alice") == 4 and g.remove("carol") == 4
        assert len(g) == 0 and g.search(queries, 2) == [[]] * 7
        assert not (folder / "index").exists()  # an empty gallery has no index
        with pytest.raises(FacelabError, match="the gallery is empty"):
            g.remove("alice")
    with pytest.raises(FacelabError, match="closed"):
        g.search(queries, 1)


def test_index_rebuilt_when_missing_stale_or_unreadable(tmp_path, caplog):
    rng = np.random.default_rng(1)
    folder = tmp_path / "g"
    added = {f"id{i}": [_unit(rng.standard_normal((2, D)))] for i in range(4)}
    queries = _unit(rng.standard_normal((5, D)))
    with Gallery.open(folder, FP) as g:
        for name, embs in added.items():
            g.add(name, [(f"{name}.jpg", embs[0])])
    shutil.copytree(folder / "index", tmp_path / "old-index")  # generation 4
    with Gallery.open(folder, FP) as g:
        g.add("late", [("late.jpg", _unit(rng.standard_normal(D)))])
        g.add("id0", [("id0-b.jpg", _unit(rng.standard_normal((1, D))))])
    per, _, generation, _ = _raw(folder)
    names, templates = _truth(per)
    assert generation == 6 and _index_generation(folder) == 6

    # stale: an old index copied back (generation 4, without "late" and id0's new photo)
    shutil.rmtree(folder / "index")
    shutil.copytree(tmp_path / "old-index", folder / "index")
    with caplog.at_level(logging.INFO, logger=LOGGER), Gallery.open(folder, FP) as g:
        assert "stale (built from generation 4, the database is at 6)" in caplog.text
        assert _index_generation(folder) == 6
        _assert_search(g, names, templates, queries, 5)
        assert "late" in {n for r in g.search(queries, 5) for n, _ in r}

    # missing
    shutil.rmtree(folder / "index")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER), Gallery.open(folder, FP) as g:
        assert "index missing" in caplog.text
        assert _index_generation(folder) == 6
        _assert_search(g, names, templates, queries, 3)

    # unreadable: garbage in the files while generation.json names the right generation
    for file in ("ids.npz", "index.faiss"):
        (folder / "index" / file).write_bytes(b"not an index")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=LOGGER), Gallery.open(folder, FP) as g:
            assert "unreadable" in caplog.text
            _assert_search(g, names, templates, queries, 3)

    # up to date: loaded, not rebuilt
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER), Gallery.open(folder, FP) as g:
        _assert_search(g, names, templates, queries, 3)
    assert "rebuilding" not in caplog.text


def test_other_model_refused(tmp_path):
    folder = tmp_path / "g"
    Gallery.open(folder, FP).close()
    with pytest.raises(FacelabError, match=r"gallery\.sqlite.*'backbone' is \"iresnet-tiny\" "
                                           r"in the gallery, \"r50\" given"):
        Gallery.open(folder, {**FP, "backbone": "r50"})
    with pytest.raises(FacelabError, match=r"'embedding_size' is 16 in the gallery, 512 given"):
        Gallery.open(folder, {**FP, "embedding_size": 512})
    with pytest.raises(FacelabError, match=r"'quantized' is \(missing\) in the gallery, true"):
        Gallery.open(folder, {**FP, "quantized": True})
    with pytest.raises(FacelabError, match=r"'weights_sha256' is \"abab.*\" in the gallery, "
                                           r"\(missing\) given"):
        Gallery.open(folder, {k: v for k, v in FP.items() if k != "weights_sha256"})
    with pytest.raises(FacelabError, match="embedding_size must be a positive integer"):
        Gallery.open(tmp_path / "other", {"backbone": "x"})
    # JSON-normalised: a tuple is the list it is stored as, key order does not matter
    same = {**dict(reversed(FP.items())), "preprocess": {"mean": 0.5, "size": (112, 112)}}
    Gallery.open(folder, same).close()


def test_open_without_a_fingerprint_reads_the_stored_one(tmp_path):
    folder = tmp_path / "g"
    with Gallery.open(folder, FP) as g:
        g.add("ann", [("a.jpg", _unit(np.ones(D)))])
    with Gallery.open(folder, None, create=False) as g:  # list / remove without the model
        assert g.fingerprint == json.loads(json.dumps(FP)) and len(g) == 1
        assert g.remove("ann") == 1
    with pytest.raises(FacelabError, match="creating a gallery needs the model's fingerprint"):
        Gallery.open(tmp_path / "new", None)
    with pytest.raises(FacelabError, match="no gallery there"):
        Gallery.open(tmp_path / "new", None, create=False)


def test_bad_embeddings_refused_and_db_unchanged(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "g"
    good = _unit(rng.standard_normal((2, D)))
    nan = good.copy()
    nan[1, 3] = np.nan
    with Gallery.open(folder, FP) as g:
        g.add("alice", [("a.jpg", good)])
        before = _dump(folder)
        cases = [
            ([("wrong-dim.jpg", _unit(rng.standard_normal((2, D + 1))))],
             r"'wrong-dim\.jpg'.*dim 17 != .*16"),
            ([("nan.jpg", nan)], r"'nan\.jpg'.*face 1 holds NaN"),
            ([("long.jpg", 2 * good)], r"'long\.jpg'.*L2-normalised.*norm 2"),
            ([("none.jpg", np.zeros((0, D), np.float32))], r"'none\.jpg'.*n_faces >= 1"),
            ([("ints.jpg", np.eye(D, dtype=np.int64)[:1])], r"'ints\.jpg'.*floats"),
            ([("", good)], "source must be a non-empty string"),
            ([("ok.jpg", good), ("bad.jpg", nan)], r"'bad\.jpg'.*NaN"),  # all or none
            ([], "non-empty list"),
        ]
        for photos, message in cases:
            for name in ("alice", "newcomer"):
                with pytest.raises(FacelabError, match=message):
                    g.add(name, photos)
        with pytest.raises(FacelabError, match="average to zero"):  # checked in the transaction
            g.add("newcomer", [("ok.jpg", good[0]), ("minus.jpg", -good[0])])
        for name in ("", "   ", 3, "a\0b"):
            with pytest.raises(FacelabError, match="identity name"):
                g.add(name, [("x.jpg", good)])
        with pytest.raises(FacelabError, match=r"queries must be \[M, 16\]"):
            g.search(good[:, :8], 1)
        with pytest.raises(FacelabError, match="L2-normalised"):
            g.search(2 * good, 1)
        with pytest.raises(FacelabError, match="k must be"):
            g.search(good, 0)
        assert _dump(folder) == before
        assert [d["name"] for d in g.identities()] == ["alice"]


def test_not_a_gallery(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(FacelabError, match=r"photos: not a gallery: no gallery\.sqlite.*a\.jpg"):
        Gallery.open(other, FP)
    assert sorted(p.name for p in other.iterdir()) == ["a.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FacelabError, match="not a gallery"):
        Gallery.open(tmp_path / "file", FP)
    with pytest.raises(FacelabError, match="no gallery there"):
        Gallery.open(tmp_path / "new", FP, create=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "gallery.sqlite").write_bytes(os.urandom(4096))
    with pytest.raises(FacelabError, match=r"corrupt/gallery\.sqlite: not a readable gallery"):
        Gallery.open(corrupt, FP)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "gallery.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(FacelabError, match=r"foreign/gallery\.sqlite: not a gallery database"):
        Gallery.open(foreign, FP)


def test_ivf_past_threshold(tmp_path, monkeypatch, caplog):
    pytest.importorskip("faiss")
    monkeypatch.setattr(G, "IVF_FROM", 40)
    rng = np.random.default_rng(3)
    folder = tmp_path / "g"
    centres = _unit(rng.standard_normal((80, D)))
    added = {}
    with Gallery.open(folder, FP) as g:
        for i, c in enumerate(centres):
            embs = _unit(c + 0.05 * rng.standard_normal((2, D)))
            added[f"id{i:02d}"] = [embs]
            g.add(f"id{i:02d}", [(f"id{i:02d}.jpg", embs)])
            if i == 38:
                assert g.index_kind == "exact"  # 39 identities
        assert g.index_kind == "ivf"
    names, templates = _truth(added)
    queries = _unit(centres + 0.05 * rng.standard_normal(centres.shape))
    truth = np.argmax(queries.astype(np.float64) @ templates.T, axis=1)
    with caplog.at_level(logging.DEBUG, logger=LOGGER), Gallery.open(folder, FP) as g:
        assert g.index_kind == "ivf"
        top = g.search(queries, 1)
        assert "rebuilding" not in caplog.text  # the saved IVF index was loaded
    assert [r[0][0] for r in top] == [names[t] for t in truth] == names  # well separated
    best = (queries.astype(np.float64) @ templates.T).max(1)  # [M]
    np.testing.assert_allclose([r[0][1] for r in top], best, rtol=0, atol=DIST_TOL)
    monkeypatch.setattr(G, "IVF_FROM", 10_000)  # the kind follows the threshold: rebuilt exact
    with Gallery.open(folder, FP) as g:
        assert g.index_kind == "exact"
        _assert_search(g, names, templates, queries[:10], 3)


# ---------------------------------------------------------------- child processes


class _Writers:
    """gallery_child.py: one process that imports facelab once and forks gallery writers on
    request (its docstring), read and SIGKILLed from here."""

    def __init__(self, log_dir):
        self.err = log_dir / "gallery_child.err"
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        self.watchdog = threading.Timer(120, self.proc.kill)  # never hang the test suite
        self.watchdog.start()
        self.lines, self.pids = [], []

    def start(self, folder, tag, calls, pause=None):
        """Fork a writer; returns its pid once it runs."""
        if not self.lines:
            self.wait_for("ready")
        command = {"folder": str(folder), "fingerprint": FP, "tag": tag, "calls": calls,
                   "pause": pause}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        pid = int(self.wait_for(f"started {tag} ").split()[2])
        self.pids.append(pid)
        return pid

    def wait_for(self, prefix):
        """Read lines up to one starting with `prefix`; returns it."""
        while True:
            line = self.proc.stdout.readline()
            assert line, f"gallery_child.py ended: {self.err.read_text()[-3000:]}"
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()

    def kill(self, pid):
        """SIGKILL writer `pid`, which must still be running (so the kill lands mid-run)."""
        os.kill(pid, signal.SIGKILL)
        assert self.wait_for(f"exited {pid} ") == f"exited {pid} {-signal.SIGKILL}"

    def close(self):
        self.watchdog.cancel()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture(scope="module", autouse=True)
def _writers_early(request, tmp_path_factory):
    """Start gallery_child.py with the module, when a test here needs it: its imports (seconds)
    then overlap the tests that run first."""
    if not any("writers" in item.fixturenames for item in request.session.items
               if item.module is request.module):
        yield None
        return
    writers = _Writers(tmp_path_factory.mktemp("writers"))
    yield writers
    writers.close()


@pytest.fixture
def writers(_writers_early):
    return _writers_early


def _assert_consistent(folder):
    """After a kill: the database is sound, every add call is in whole or not at all, and the
    gallery opens with an index that matches the database."""
    con = sqlite3.connect(folder / "gallery.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.execute("PRAGMA foreign_keys=ON")
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("SELECT COUNT(*) FROM identities i WHERE NOT EXISTS "
                       "(SELECT 1 FROM photos p WHERE p.identity_id = i.id)").fetchone() == (0,)
    con.close()
    per, photos, generation, db_names = _raw(folder)
    for source, faces in photos.items():  # source TAG-j-side-nN: N faces 0..N-1
        assert sorted(faces) == list(range(int(source.rsplit("-n", 1)[1]))), source
    calls = Counter(source.rsplit("-", 2)[0] for source in photos)
    assert set(calls.values()) == {2}, calls  # both photos of each add call, or neither
    names, templates = _truth(per)
    assert sorted(db_names) == names
    queries = _unit(np.random.default_rng(generation).standard_normal((6, D)))
    with Gallery.open(folder, FP, create=False) as g:
        assert _index_generation(folder) == generation  # rebuilt if it was stale
        assert len(g) == len(names)
        _assert_search(g, names, templates, queries, 4)
    return photos


def _write_locked(db):
    """Whether another connection holds the database's write lock (is inside a write
    transaction): BEGIN IMMEDIATE without waiting fails then."""
    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as e:
        assert "locked" in str(e) or "busy" in str(e), e
        return True
    finally:
        con.close()


def _until(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_kill9_leaves_gallery_consistent(tmp_path, writers):
    folder = tmp_path / "g"
    db = folder / "gallery.sqlite"
    rng = np.random.default_rng(4)
    with Gallery.open(folder, FP) as g:
        g.add("init", [("init-0-a-n1", _unit(rng.standard_normal(D))),
                       ("init-0-b-n1", _unit(rng.standard_normal(D)))])

    # 1. inside add's write transaction (inserts done, COMMIT not yet): all rolled back
    pid = writers.start(folder, "T0", 200, pause="transaction:0.4")
    writers.wait_for("adding T0-1-a")
    _until(lambda: _write_locked(db), "T0 inside its write transaction")
    writers.kill(pid)
    assert "added T0-0-a-n2" in writers.lines and "added T0-1-a-n3" not in writers.lines
    photos = _assert_consistent(folder)
    assert "T0-0-a-n2" in photos and "T0-1-a-n3" not in photos and "T0-1-b-n3" not in photos

    # 2. after the commit, before the index is saved: the saved index is stale, then rebuilt
    pid = writers.start(folder, "T1", 200, pause="index:0.4")
    writers.wait_for("adding T1-1-a")
    _until(lambda: "T1-1-a-n3" in _raw(folder)[1], "T1's second add committed")
    writers.kill(pid)
    assert "added T1-1-a-n3" not in writers.lines
    assert _index_generation(folder) < _raw(folder)[2]  # stale on disk...
    photos = _assert_consistent(folder)  # ...and the open rebuilt it (asserted inside)
    assert {"T1-1-a-n3", "T1-1-b-n3"} <= set(photos)

    # 3. anywhere: random moments of a fast add loop, twice
    for tag in ("T2", "T3"):
        pid = writers.start(folder, tag, 200)
        writers.wait_for(f"added {tag}-2-a")
        time.sleep(rng.uniform(0, 0.03))
        writers.kill(pid)
        photos = _assert_consistent(folder)
        assert f"{tag}-2-a-n4" in photos


def test_concurrent_readers_while_a_process_writes(tmp_path, writers):
    folder = tmp_path / "g"
    rng = np.random.default_rng(5)
    with Gallery.open(folder, FP) as g:
        for i in range(3):
            g.add(f"start{i}", [(f"start-{i}-a-n1", _unit(rng.standard_normal(D))),
                                (f"start-{i}-b-n1", _unit(rng.standard_normal(D)))])
    stop = threading.Event()
    errors, searches, generations = [], Counter(), defaultdict(set)

    def read(r):
        """Open, search a few times, close; again: every name found exists in the database."""
        queries = _unit(np.random.default_rng(r).standard_normal((4, D)))
        try:
            while not stop.is_set():
                with Gallery.open(folder, FP, create=False) as g:
                    for _ in range(5):
                        found = {name for result in g.search(queries, 3) for name, _ in result}
                        assert len(found) >= 3
                        exists = {d["name"] for d in g.identities()}  # only grows: read after
                        assert found <= exists, found - exists
                        generations[r].add(g.generation)
                        searches[r] += 1
        except Exception as e:  # reported by the main thread
            errors.append(e)

    readers = [threading.Thread(target=read, args=(r,)) for r in range(2)]
    for t in readers:
        t.start()
    try:
        pid = writers.start(folder, "W", 25)
        assert writers.wait_for(f"exited {pid} ") == f"exited {pid} 0", writers.err.read_text()
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert "done" in writers.lines
    assert not errors, errors
    assert all(searches[r] >= 10 for r in range(2)), searches
    assert all(len(generations[r]) >= 3 for r in range(2)), generations  # they overlapped
    per, _, generation, _ = _raw(folder)
    names, templates = _truth(per)
    assert len(names) == 3 + 5 and generation == 3 + 25
    with Gallery.open(folder, FP) as g:
        _assert_search(g, names, templates, _unit(rng.standard_normal((5, D))), 4)
