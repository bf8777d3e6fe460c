"""A persistent face gallery: named identities, their photos and face embeddings, searchable 1:N.

On disk, a gallery is a folder:

    DIR/gallery.sqlite       the truth: an SQLite database (WAL journal: -wal and -shm files beside)
    DIR/index/               derived from it: the FAISS index of identity templates
        index.faiss, ids.npz   GalleryIndex.save (protocols/gallery_index.py)
        generation.json        {"generation", "identities", "kind"} it was built from (written last)
    DIR/index.lock           flock(2) lock file: one process writes DIR/index/ at a time, and
                             readers never load it half-written

Tables: `meta` (key, value: the model fingerprint as JSON, the generation counter, the creation
time), `identities` (name unique, added), `photos` (identity, source such as a file path, added)
and `embeddings` (photo, face index, dim, float32 little-endian vector BLOB of 4 * dim bytes);
deleting an identity deletes its photos and embeddings (foreign keys, ON DELETE CASCADE). Vectors
are stored L2-normalised. Every write transaction adds one to the generation counter.

The index has one row per identity: its template, the mean of its L2-normalised embeddings,
L2-normalised again (search.identity_templates), searched by inner product (cosine) with
GalleryIndex: exact (faiss IndexFlatIP) below IVF_FROM identities, IVF past it (approximate; see
gallery_index.py). It is never trusted blindly: before use (on open, after a write, and before a
search when the database's generation moved) its generation.json must name the database's current
generation, and its rows, dimension and kind must match the database; otherwise (missing,
unreadable, stale: e.g. a process killed between its commit and the index save, or an old copy
put back) it is rebuilt from the database and saved again (logged). An empty gallery has no index.

Consistency under crashes: a write (add, remove) is one SQLite transaction, all or nothing, even
under SIGKILL or power loss. synchronous=FULL, not NORMAL: in WAL mode NORMAL may lose the last
commits on power loss, and the generation counter would then go back and be reused by a later,
different write, so that an index saved for the lost commit would carry the number of the new one
and be trusted wrongly. A saved index is labelled with the generation of the database snapshot it
was built from, and generation.json is written last (each file atomically, io.write_atomic), so a
save cut short leaves an older label, which no longer matches the database.

Concurrency: any number of processes may open one gallery. Readers never block writers nor each
other (WAL); writers take the write lock up front (BEGIN IMMEDIATE) and wait for each other up to
BUSY_TIMEOUT_S instead of failing with "database is locked". One Gallery object belongs to one
thread (one SQLite connection); open one per thread. Locking of the index folder uses flock(2);
where fcntl does not exist (Windows) it is skipped and concurrent writers could race on the index
(which is still checked against the database when loaded).

Cost: every write rebuilds the index from all embeddings (and retrains IVF past IVF_FROM).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.eval.protocols.gallery_index import NORM_TOL, GalleryIndex, check_features
from facelab.eval.protocols.search import identity_templates
from facelab.io import check_writable, remove_stale_temps, write_atomic
from facelab.jsonfile import strict_json

try:
    import fcntl
except ImportError:  # Windows: no flock; see the module docstring
    fcntl = None

log = logging.getLogger(__name__)

IVF_FROM = 10_000  # identities from which the index is IVF (approximate) instead of exact
DB_FILE = "gallery.sqlite"
INDEX_DIR = "index"
GENERATION_FILE = "generation.json"
LOCK_FILE = "index.lock"
SCHEMA_VERSION = 1  # PRAGMA user_version of the database
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another one's transaction
TEST_PAUSE_ENV = "FACELAB_GALLERY_TEST_PAUSE"  # test hook, see _test_pause
_TABLES = {"meta", "identities", "photos", "embeddings"}
_PROBE_PREFIX = ".facelab-write-test."  # io.check_writable's probe files

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS identities (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
        added TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS photos (
        id INTEGER PRIMARY KEY,
        identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        source TEXT NOT NULL,
        added TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS photos_identity ON photos(identity_id)",
    """CREATE TABLE IF NOT EXISTS embeddings (
        id INTEGER PRIMARY KEY,
        photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
        face INTEGER NOT NULL CHECK (face >= 0),
        dim INTEGER NOT NULL CHECK (dim > 0),
        vector BLOB NOT NULL CHECK (length(vector) = 4 * dim),
        UNIQUE (photo_id, face))""",
)
# Identities that have a template: at least one embedding (add never makes one without).
_INDEXED_NAMES = """SELECT name FROM identities i WHERE EXISTS (
    SELECT 1 FROM photos p JOIN embeddings e ON e.photo_id = p.id WHERE p.identity_id = i.id)"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _test_pause(where: str) -> None:
    """Test hook: FACELAB_GALLERY_TEST_PAUSE="<where>:<seconds>" sleeps that long at point `where`
    of `add`: "transaction" inside its write transaction, after every insert and before COMMIT;
    "index" after the COMMIT, before the index is rebuilt and saved. The code path is the real one,
    only paused, so that a test's SIGKILL lands there deterministically. Unset: no effect."""
    spec = os.environ.get(TEST_PAUSE_ENV)
    if spec and spec.partition(":")[0] == where:
        time.sleep(float(spec.partition(":")[2]))


def _normalise_fingerprint(fingerprint: dict) -> dict:
    """The fingerprint as its JSON round trip (tuples as lists, keys as strings), with a positive
    integer embedding_size."""
    if not isinstance(fingerprint, dict):
        raise FacelabError(
            f"gallery fingerprint must be a dict, got {type(fingerprint).__name__}"
        )
    try:
        fingerprint = json.loads(strict_json(fingerprint, indent=None, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise FacelabError(f"gallery fingerprint must be plain JSON values ({e})") from None
    size = fingerprint.get("embedding_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FacelabError(
            f"gallery fingerprint: embedding_size must be a positive integer, got {size!r}"
        )
    return fingerprint


def _fingerprint_difference(stored: dict, given: dict) -> str | None:
    """'field F: A in the gallery, B given' for the first field (sorted) that differs, or None."""
    for key in sorted(set(stored) | set(given)):
        a, b = (
            strict_json(d[key], indent=None, sort_keys=True) if key in d else "(missing)"
            for d in (stored, given)
        )
        if a != b:
            return f"field {key!r} is {a} in the gallery, {b} given"
    return None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise FacelabError(f"gallery: an identity name must be a non-empty string, got {name!r}")
    if "\0" in name:
        raise FacelabError(f"gallery: identity name {name!r} holds a NUL character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FacelabError(f"gallery: identity name {name!r} is not valid Unicode") from None
    return name


def _check_photo(name: str, item: object, dim: int) -> tuple[str, np.ndarray]:
    """One (source, embeddings) item of `add` -> (source, float32 [n_faces, dim] L2-normalised)."""
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise FacelabError(
            f"gallery add {name!r}: each photo must be a (source, embeddings) pair, got {item!r}"
        )
    source, emb = item
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise FacelabError(
            f"gallery add {name!r}: a photo source must be a non-empty string, got {source!r}"
        )
    where = f"gallery add {name!r}, photo {source!r}"
    emb = np.asarray(emb)
    if emb.ndim == 1:
        emb = emb[None]  # [1, d]
    if emb.ndim != 2 or len(emb) == 0:
        raise FacelabError(
            f"{where}: embeddings must be [n_faces >= 1, d] or [d], got shape {emb.shape}"
        )
    if emb.dtype.kind != "f":
        raise FacelabError(f"{where}: embeddings must be floats, got dtype {emb.dtype}")
    if emb.shape[1] != dim:
        raise FacelabError(
            f"{where}: embedding dim {emb.shape[1]} != the gallery's embedding_size {dim}"
        )
    emb = emb.astype(np.float64)  # [n, d]
    bad = np.flatnonzero(~np.isfinite(emb).all(1))
    if len(bad):
        raise FacelabError(f"{where}: embedding of face {bad[0]} holds NaN or inf")
    norms = np.linalg.norm(emb, axis=1)  # [n]
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOL)
    if len(bad):
        raise FacelabError(
            f"{where}: embeddings must be L2-normalised (|norm - 1| <= {NORM_TOL}), "
            f"face {bad[0]} has norm {norms[bad[0]]:.4g}"
        )
    return source, (emb / norms[:, None]).astype("<f4")


class Gallery:
    """A face gallery in a folder (module docstring): add/remove identities, search templates.

    Make one with `Gallery.open`; close it (or use it as a context manager) when done.
    """

    def __init__(self, folder: Path, fingerprint: dict, conn: sqlite3.Connection) -> None:
        """Private: use Gallery.open."""
        self.folder = folder
        self._fingerprint = fingerprint
        self.dim: int = fingerprint["embedding_size"]
        self._db = folder / DB_FILE
        self._conn: sqlite3.Connection | None = conn
        self._index: GalleryIndex | None = None
        self._index_gen: int | None = None  # the generation self._index was built from

    # ------------------------------------------------------------------------------ opening

    @classmethod
    def open(cls, folder: str | Path, fingerprint: dict | None, create: bool = True) -> Gallery:
        """Open (or create when `create`) the gallery in `folder`.

        `fingerprint` describes the model whose embeddings the gallery holds (JSON dict: backbone,
        embedding_size, preprocess, weights_sha256, ...): embeddings of another model are not
        comparable, so a gallery made by another model (fingerprint differs after JSON
        normalisation) is refused with a FacelabError naming the first differing field and both
        values. A folder that exists but is not a gallery (other files, no gallery.sqlite), or an
        unreadable / corrupt / foreign database -> FacelabError naming the folder or file. The
        saved index is checked against the database and rebuilt when it does not match.
        fingerprint None opens an existing gallery as whatever model made it (to list or remove
        identities without loading that model); it cannot create one.
        """
        folder = Path(folder)
        if fingerprint is None and create:
            raise FacelabError(f"{folder}: creating a gallery needs the model's fingerprint")
        if fingerprint is not None:
            fingerprint = _normalise_fingerprint(fingerprint)
        db = folder / DB_FILE
        if folder.exists() and not folder.is_dir():
            raise FacelabError(f"{folder}: not a gallery (a file, not a folder)")
        if not db.exists():
            entries = folder.iterdir() if folder.is_dir() else []
            others = [p.name for p in entries if not p.name.startswith(_PROBE_PREFIX)]
            if others:
                raise FacelabError(
                    f"{folder}: not a gallery: no {DB_FILE}, and the folder holds other files "
                    f"({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''})"
                )
            if not create:
                raise FacelabError(f"{folder}: no gallery there (no {DB_FILE})")
        check_writable(folder, "gallery folder")  # SQLite's WAL needs it even to read
        conn = None
        try:
            conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise FacelabError(f"{db}: cannot use the WAL journal (SQLite says {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            fingerprint = cls._init_schema(conn, db, fingerprint, create)
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise FacelabError(f"{db}: not a readable gallery database ({e})") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self = cls(folder, fingerprint, conn)
        try:
            self._sync_index("open")
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _init_schema(conn: sqlite3.Connection, db: Path, fingerprint: dict | None,
                     create: bool) -> dict:
        """Create the tables in a database without any (a new gallery, or one whose creation was
        cut short before its first commit); check an existing one's schema and fingerprint.
        Returns the gallery's fingerprint."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            if not create:
                raise FacelabError(f"{db}: an empty database, not a gallery")
            conn.execute("BEGIN IMMEDIATE")  # two processes creating it: one after the other
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                meta = {
                    "fingerprint": strict_json(fingerprint, indent=None, sort_keys=True),
                    "generation": "0",
                    "created": _now(),
                }
                conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", meta.items())
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            tables = _TABLES
        if not _TABLES <= tables:
            raise FacelabError(
                f"{db}: not a gallery database "
                f"(tables {sorted(tables)}, expected {sorted(_TABLES)})"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise FacelabError(
                f"{db}: gallery schema version {version}, this facelab reads {SCHEMA_VERSION}"
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        try:
            stored = json.loads(row[0]) if row else None
        except ValueError:
            stored = None
        if not isinstance(stored, dict):
            raise FacelabError(f"{db}: the gallery's model fingerprint is missing or not JSON")
        if fingerprint is None:
            return _normalise_fingerprint(stored)
        diff = _fingerprint_difference(stored, fingerprint)
        if diff:
            raise FacelabError(f"{db}: the gallery was made by another model: {diff}")
        return fingerprint

    # ------------------------------------------------------------------------------ public API

    @property
    def fingerprint(self) -> dict:
        """The model fingerprint (JSON-normalised), a copy."""
        return copy.deepcopy(self._fingerprint)

    @property
    def generation(self) -> int:
        """The database's generation counter: the number of write transactions so far."""
        with self._sql("read"):
            return self._generation(self._connection())

    @property
    def index_kind(self) -> str | None:
        """The kind of the index searched now ("exact", "ivf", "numpy"), None for an empty
        gallery."""
        self._sync_index("search")
        return None if self._index is None else self._index.kind

    def add(self, name: str, photos: list[tuple[str, np.ndarray]]) -> int:
        """Add photos of identity `name` (created if new) and return the number of embeddings
        added.

        Each item is (source, embeddings float32 [n_faces, d] or [d]); source says where the photo
        came from (e.g. its file path). Everything is checked first, then written in ONE
        transaction: all photos are in or none. Refused with a FacelabError naming the photo's
        source: embeddings not finite, not L2-normalised (|norm - 1| > gallery_index.NORM_TOL),
        d != the fingerprint's embedding_size, no face; also an empty name or photo list. Vectors
        are stored renormalised to unit length. After the commit the index is rebuilt and saved.
        """
        self._connection()  # closed: say so before checking the input
        name = _check_name(name)
        if not isinstance(photos, list | tuple) or not photos:
            raise FacelabError(
                f"gallery add {name!r}: photos must be a non-empty list of (source, embeddings)"
            )
        checked = [_check_photo(name, item, self.dim) for item in photos]
        added = _now()
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO identities (name, added) VALUES (?, ?)", (name, added)
            )
            ident = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()[0]
            for source, emb in checked:
                photo = conn.execute(
                    "INSERT INTO photos (identity_id, source, added) VALUES (?, ?, ?)",
                    (ident, source, added),
                ).lastrowid
                conn.executemany(
                    "INSERT INTO embeddings (photo_id, face, dim, vector) VALUES (?, ?, ?, ?)",
                    [(photo, face, self.dim, row.tobytes()) for face, row in enumerate(emb)],
                )
            self._check_template(conn, ident, name)
            _test_pause("transaction")
        _test_pause("index")
        self._sync_index("write")
        return sum(len(emb) for _, emb in checked)

    def remove(self, name: str) -> int:
        """Remove identity `name` with its photos and embeddings; returns the number of embeddings
        removed. An unknown name -> FacelabError listing close names (or saying there are none)."""
        name = _check_name(name)
        with self._write() as conn:
            row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                names = [r[0] for r in conn.execute("SELECT name FROM identities")]
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
                hint = (
                    f"close names: {', '.join(map(repr, close))}" if close
                    else "no close names" if names else "the gallery is empty"
                )
                raise FacelabError(f"{self.folder}: no identity {name!r} in the gallery; {hint}")
            count = conn.execute(
                "SELECT COUNT(*) FROM embeddings e JOIN photos p ON p.id = e.photo_id "
                "WHERE p.identity_id = ?",
                row,
            ).fetchone()[0]
            conn.execute("DELETE FROM identities WHERE id = ?", row)  # cascades
        self._sync_index("write")
        return count

    def identities(self) -> list[dict]:
        """[{"name", "photos", "embeddings", "added"}] for every identity, sorted by name ("added":
        ISO 8601 UTC time the identity was created)."""
        with self._read() as conn:
            rows = conn.execute(
                """SELECT i.name, COUNT(DISTINCT p.id), COUNT(e.id), i.added FROM identities i
                LEFT JOIN photos p ON p.identity_id = i.id LEFT JOIN embeddings e
                ON e.photo_id = p.id GROUP BY i.id"""
            ).fetchall()
        keys = ("name", "photos", "embeddings", "added")
        return sorted((dict(zip(keys, r, strict=True)) for r in rows), key=lambda d: d["name"])

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per query of `queries` [M, d] (L2-normalised), up to k (identity name, cosine score)
        best first.

        Scores are cosines with the identity templates. Fewer than k candidates when the gallery
        holds fewer identities (none when it is empty) or when IVF finds fewer. The index is
        brought up to date with the database first if another process wrote since.
        """
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise FacelabError(
                f"gallery search: queries must be [M, {self.dim}], got shape {queries.shape}"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise FacelabError(f"gallery search: k must be an integer >= 1, got {k!r}")
        if len(queries) == 0:
            return []
        queries = check_features(queries, "query", self.dim)
        self._sync_index("search")
        if self._index is None:
            return [[] for _ in queries]
        scores, rows = self._index.search(queries, int(k))  # [M, k'] each
        ids = self._index.ids
        return [
            [(str(ids[r]), float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def __len__(self) -> int:
        """The number of identities."""
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM identities").fetchone()[0]

    def close(self) -> None:
        """Close the database connection (the gallery stays on disk); idempotent."""
        if self._conn is not None:
            self._conn.close()
        self._conn, self._index, self._index_gen = None, None, None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"generation {self._index_gen}"
        return f"Gallery({str(self.folder)!r}, {state})"

    # ------------------------------------------------------------------------------ database

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FacelabError(f"{self.folder}: the gallery is closed")
        return self._conn

    @contextmanager
    def _sql(self, what: str) -> Iterator[None]:
        """SQLite errors (corruption, a disk error, a lock held past the timeout) as FacelabError
        naming the database file."""
        try:
            yield
        except sqlite3.Error as e:
            raise FacelabError(f"{self._db}: gallery database {what} failed ({e})") from None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in it sees one snapshot of the database."""
        conn = self._connection()
        with self._sql("read"):
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")  # nothing written: ends the snapshot

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that adds one to the generation; rolled back on any exception.

        BEGIN IMMEDIATE takes the write lock at once, waiting (busy timeout) for another writer:
        a deferred transaction upgrading from read to write could fail with "database is locked"
        without waiting when another process committed after its snapshot.
        """
        conn = self._connection()
        with self._sql("write"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _generation(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _check_template(self, conn: sqlite3.Connection, ident: int, name: str) -> None:
        """Inside add's transaction: refuse embeddings whose mean is (numerically) zero, which
        has no direction to search by (the index could not be built)."""
        total, count = np.zeros(self.dim), 0  # [d] float64
        for (blob,) in conn.execute(
            "SELECT e.vector FROM embeddings e JOIN photos p ON p.id = e.photo_id "
            "WHERE p.identity_id = ?",
            (ident,),
        ):
            total += np.frombuffer(blob, dtype="<f4")
            count += 1
        if np.linalg.norm(total) <= 1e-6 * count:
            raise FacelabError(
                f"gallery add {name!r}: the embeddings of the identity average to zero "
                "(no template direction); nothing added"
            )

    def _read_embeddings(self) -> tuple[int, np.ndarray, np.ndarray]:
        """One snapshot: (generation, identity name per embedding [N], embeddings
        float32 [N, d])."""
        with self._read() as conn:
            generation = self._generation(conn)
            rows = conn.execute(
                "SELECT i.name, e.vector FROM embeddings e JOIN photos p ON p.id = e.photo_id "
                "JOIN identities i ON i.id = p.identity_id"
            ).fetchall()
        blob = b"".join(r[1] for r in rows)
        if len(blob) != 4 * self.dim * len(rows):
            raise FacelabError(f"{self._db}: embeddings of another dimension than {self.dim}")
        feats = np.frombuffer(blob, dtype="<f4").reshape(len(rows), self.dim)  # [N, d]
        return generation, np.array([r[0] for r in rows], dtype=str), feats

    # ------------------------------------------------------------------------------ index

    @contextmanager
    def _index_lock(self, exclusive: bool) -> Iterator[None]:
        """flock on DIR/index.lock: exclusive to write DIR/index/, shared to read it."""
        if fcntl is None:
            yield
            return
        path = self.folder / LOCK_FILE
        try:
            f = open(path, "a+b")  # closed below, which releases the lock
        except OSError as e:
            raise FacelabError(f"{path}: cannot open the gallery's lock file ({e})") from None
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    def _sync_index(self, when: str) -> None:
        """Make self._index the index of the database's current generation: the one in memory,
        the saved one if it matches the database, else one rebuilt from the database (and saved).
        `when` ("open", "write", "search") sets how loudly a rebuild is logged."""
        with self._sql("read"):
            generation = self._generation(self._connection())
        if generation == self._index_gen:
            return
        with self._read() as conn:
            generation = self._generation(conn)
            names = sorted(r[0] for r in conn.execute(_INDEXED_NAMES))
        if not names:
            self._index, self._index_gen = None, generation
            if (self.folder / INDEX_DIR).exists():
                with self._index_lock(exclusive=True), self._read() as conn:
                    if not conn.execute(_INDEXED_NAMES).fetchone():  # still empty
                        self._remove_saved_index()
            return
        with self._index_lock(exclusive=False):
            index, why = self._load_saved(generation, names)
        if index is None:
            with self._index_lock(exclusive=True):
                index, _ = self._load_saved(generation, names)  # saved meanwhile by another?
                if index is None:
                    level = {"open": logging.INFO if why == "missing" else logging.WARNING,
                             "search": logging.INFO}.get(when, logging.DEBUG)
                    log.log(level, "%s: gallery index %s: rebuilding it from the database",
                            self.folder / INDEX_DIR, why)
                    index, generation = self._build_and_save()
        self._index, self._index_gen = index, generation

    def _expected_kind(self, n: int) -> str:
        return "ivf" if n >= IVF_FROM else "exact"

    def _load_saved(self, generation: int, names: list[str]) -> tuple[GalleryIndex | None, str]:
        """(the saved index, "") if it was built from `generation` and has one row per name, of
        the gallery's dim and the expected kind; else (None, why not)."""
        folder = self.folder / INDEX_DIR
        try:
            meta = json.loads((folder / GENERATION_FILE).read_text())
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError) as e:
            return None, f"unreadable ({GENERATION_FILE}: {e})"
        saved = meta.get("generation") if isinstance(meta, dict) else None
        if saved != generation:
            return None, f"stale (built from generation {saved}, the database is at {generation})"
        try:
            index = GalleryIndex.load(folder)
        except FacelabError as e:
            return None, f"unreadable ({e})"
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            return None, f"unreadable ({type(e).__name__}: {e})"
        if index.dim != self.dim or sorted(index.ids.tolist()) != names:
            return None, (
                f"inconsistent with the database ({len(index)} rows of dim {index.dim}, "
                f"{len(names)} identities of dim {self.dim})"
            )
        if index.kind not in (self._expected_kind(len(names)), "numpy"):
            return None, f"of kind {index.kind!r} for {len(names)} identities"
        return index, ""

    def _build_and_save(self) -> tuple[GalleryIndex | None, int]:
        """Build the index from one database snapshot and save it labelled with that snapshot's
        generation (caller holds the exclusive lock). A save that fails (e.g. a full disk) is
        logged: the index built in memory serves this Gallery, the next open rebuilds it."""
        generation, names, feats = self._read_embeddings()
        if len(feats) == 0:  # emptied meanwhile by another process
            self._remove_saved_index()
            return None, generation
        templates, ids = identity_templates(feats, names)  # [U, d], [U] sorted
        index = GalleryIndex(templates, ids, kind=self._expected_kind(len(ids)))
        folder = self.folder / INDEX_DIR
        label = {"generation": generation, "identities": len(ids), "kind": index.kind}
        try:
            folder.mkdir(exist_ok=True)
            remove_stale_temps(folder)  # left by a process killed mid-save
            index.save(folder)
            text = strict_json(label, indent=None)
            write_atomic(folder / GENERATION_FILE, lambda tmp: tmp.write_text(text))
        except OSError as e:
            log.warning("%s: cannot save the gallery index (%s); it will be rebuilt", folder, e)
        return index, generation

    def _remove_saved_index(self) -> None:
        """An empty gallery has no index (caller holds the exclusive lock)."""
        shutil.rmtree(self.folder / INDEX_DIR, ignore_errors=True)


__all__ = ["IVF_FROM", "Gallery"]
