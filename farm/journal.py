"""The run journal: which tracks are done, so a rerun renders only what changed.

A SQLite file in the output folder (:data:`JOURNAL_NAME`) holds one row per
output: the input's content hash, a hash of every setting that shapes the
master, the status, the result record (JSON) and the output file's size and
hash. A track is *done* when all of these still hold (see
:meth:`Journal.stale_reason`)::

    with Journal(out_dir) as journal:
        h = journal.input_hash(task.track.source)
        if not force and journal.is_done(task, h):
            result = journal.lookup(task_key(task)).result   # reuse
        else:
            result = render(task)                             # on a worker
            journal.record(task, h, result)                   # client only

Crash safety. Only the client writes the journal, and it records a track
only after the render returned, i.e. after the master was fsynced and renamed
to its final name (:func:`farm.audio.commit`); :meth:`Journal.record` also
checks that the output exists, so a row is never marked done before its file
is final. Each record is its own ``BEGIN IMMEDIATE ... COMMIT`` in WAL mode
with ``synchronous=FULL``: killing the client (or losing power) at any moment
leaves the journal holding exactly the records whose commit returned, and
opening it again rolls any torn write back. Several threads may share one
:class:`Journal` (a lock serialises them); several processes may open the
same file (a busy timeout makes them wait for each other) though our design
has one writer. SQLite's WAL needs shared memory, so the output folder must
be on a local disk, not NFS/SMB.

Hashes. Content hashes are SHA-256 (hardware-accelerated on x86/ARM, ~2 GB/s
here, faster than BLAKE2b in hashlib), tagged ``sha256:`` so the algorithm can
change without false matches. Rehashing every input on every rerun is the
safe default's cost; :meth:`Journal.input_hash` keeps a cache keyed on the
file's full identity (device, inode, size, mtime_ns, ctime_ns) and trusts it
only when the file's mtime was at least :data:`RACY_WINDOW_NS` older than the
moment hashing began, the way git guards its index against "racily clean"
files: a write in the same timestamp granule as the cached mtime cannot then
go unseen. ``ctime`` cannot be set by tools that preserve mtimes (``cp -p``,
``rsync -t``, ``touch -d``), so restoring other bytes under an old mtime is
caught too. ``Journal(..., trust_stat=False)`` always rehashes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from kernels.params import REVERB_TYPES

from .records import STATUS_FAILED, STATUS_OK, RenderTask, TrackResult

JOURNAL_NAME = ".farm-journal.sqlite"
SCHEMA_VERSION = 1
HASH_ALGORITHM = "sha256"
BLOCK_BYTES = 1 << 20
# A cached file hash is trusted only if the file's mtime is this much older than
# the moment its hashing began (covers 2 s FAT/SMB timestamps and coarse clocks).
RACY_WINDOW_NS = 2_000_000_000
# Bump when the render changes what it writes for the same settings (a DSP fix),
# so that every journal entry made before it reads as "settings changed".
SETTINGS_SALT = "farm-render-2"  # 2: fields at their defaults left out (see _settings_dict)

_COLUMNS = ("key, row, source, input_hash, settings_hash, settings, status, reason, result, output, "
            "output_size, output_hash, attempts, first_recorded, recorded")
_SCHEMA = ("""
CREATE TABLE IF NOT EXISTS tracks (
    key            TEXT PRIMARY KEY,   -- task_key(): input path + output path
    row            INTEGER NOT NULL,   -- catalog row, for ordering and messages
    source         TEXT NOT NULL,
    input_hash     TEXT NOT NULL,
    settings_hash  TEXT NOT NULL,
    settings       TEXT NOT NULL,      -- the canonical JSON that was hashed, to explain reruns
    status         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    result         TEXT NOT NULL,      -- TrackResult.to_dict() as JSON
    output         TEXT,               -- final path, NULL unless status is ok
    output_size    INTEGER,
    output_hash    TEXT,
    attempts       INTEGER NOT NULL DEFAULT 1,
    first_recorded REAL NOT NULL,      -- unix seconds
    recorded       REAL NOT NULL
)""", """
CREATE TABLE IF NOT EXISTS files (     -- content-hash cache keyed on the file's identity
    path       TEXT PRIMARY KEY,
    dev        INTEGER NOT NULL,
    ino        INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    ctime_ns   INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    hashed_ns  INTEGER NOT NULL        -- wall clock when hashing began
)""")


class JournalError(ValueError):
    """The journal cannot be used or would be wrong; the message names the file and the fix."""


# ---------------------------------------------------------------- hashing

def file_hash(path: str) -> str:
    """``"sha256:<hex>"`` of the file's bytes, streamed in 1 MiB blocks."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+: blocks read in C, GIL released
            h = hashlib.file_digest(f, HASH_ALGORITHM)
        else:
            h = hashlib.new(HASH_ALGORITHM)
            while block := f.read(BLOCK_BYTES):
                h.update(block)
    return f"{HASH_ALGORITHM}:{h.hexdigest()}"


def _settings_dict(obj: Any) -> Any:
    """``dataclasses.asdict`` without the fields that hold their default: a field
    added to a record later (a new stage, bypassed by default; a new output
    option) leaves the hash of every task that does not use it unchanged, so an
    upgrade re-renders no catalog."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING and _same(v, f.default):
                continue
            if f.default_factory is not dataclasses.MISSING and _same(v, f.default_factory()):
                continue
            out[f.name] = _settings_dict(v)
        return out
    if isinstance(obj, dict):
        return {k: _settings_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_settings_dict(v) for v in obj]
    return obj


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # e.g. an array compared elementwise: not a default
        return False


def _canonical(obj: Any) -> Any:
    """Plain JSON values with one spelling per value: 1.0 and 1 hash alike (TOML
    ``-1`` vs ``-1.0``), tuples are lists, numpy scalars are Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item") and not isinstance(obj, (int, float)):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float):
        if math.isfinite(obj) and obj.is_integer() and abs(obj) < 2**53:
            return int(obj)
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, int):
        return obj
    raise TypeError(f"cannot hash setting of type {type(obj).__name__}: {obj!r}")


def _ir_path(task: RenderTask) -> str | None:
    """The user impulse-response file the render will load (as farm.render resolves it)."""
    rv = task.chain.reverb
    if rv.bypass or rv.ir in REVERB_TYPES:
        return None
    return task.user_file(rv.ir)


def _reference_path(task: RenderTask) -> str | None:
    """The reference master the match will load (the row's own, else the preset's), or None."""
    row = getattr(task.track, "reference", None)
    m = getattr(task.chain, "match", None)
    if row:
        return task.user_file(row)
    if m is None or m.bypass or not m.reference:
        return None
    return task.user_file(m.reference)


def settings_json(task: RenderTask, ir_hash: Callable[[str], str] = file_hash) -> str:
    """The canonical JSON of everything that shapes the master (what :func:`settings_hash` hashes).

    Included: the chain parameters, output and delivery specs, output path,
    preset name, the track's tags and overrides, the input path, the
    impulse-response search path and the *content* of a user impulse response.
    Left out: the catalog row number (identity, not a setting: reordering a
    catalog re-renders nothing) and the backend (CPU and GPU masters both meet
    the spec; switching hardware should not redo a catalog).
    """
    d = _settings_dict(task)
    d.pop("backend", None)
    d.pop("memory_budget_mb", None)
    d.pop("gpu_memory_budget_mb", None)  # how much memory a render may use changes how, not what, it renders
    d["track"].pop("row", None)
    tags = {k: v for k, v in d["track"].get("tags", {}).items() if v}
    if tags:  # no tags (or only empty ones) is the default: left out like any other default
        d["track"]["tags"] = tags
    else:
        d["track"].pop("tags", None)
    ir = _ir_path(task)
    if ir is not None:
        d["ir_content"] = ir_hash(ir) if os.path.isfile(ir) else f"missing:{ir}"
    ref = _reference_path(task)
    if ref is not None:  # a new reference at the same path is a new setting
        d["reference_content"] = ir_hash(ref) if os.path.isfile(ref) else f"missing:{ref}"
    d["salt"] = SETTINGS_SALT
    return json.dumps(_canonical(d), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def settings_hash(task: RenderTask, ir_hash: Callable[[str], str] = file_hash) -> str:
    """A stable ``"sha256:<hex>"`` of :func:`settings_json` (JSON with sorted keys, never pickle)."""
    return f"{HASH_ALGORITHM}:{hashlib.sha256(settings_json(task, ir_hash).encode()).hexdigest()}"


def task_key(task: RenderTask) -> str:
    """A track's identity in the journal: its input's absolute path and its output path.

    Not the row number: inserting or reordering catalog rows must not make
    every later track look new. Two rows can share an input (one recording
    on two releases) because their outputs differ.
    """
    return json.dumps([os.path.abspath(task.track.source), os.path.abspath(task.out_path)],
                      ensure_ascii=False)


# ---------------------------------------------------------------- the journal

@dataclass(frozen=True)
class Entry:
    """One journal row."""

    key: str
    row: int
    source: str
    input_hash: str
    settings_hash: str
    settings: str
    status: str
    reason: str
    result: TrackResult
    output: str | None
    output_size: int | None
    output_hash: str | None
    attempts: int
    first_recorded: float
    recorded: float


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars in measurements
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable: {obj!r}")


class Journal:
    """The SQLite journal of one output folder; use as a context manager.

    ``path`` is the journal file, or an output folder (the journal is then
    ``path/.farm-journal.sqlite``). ``timeout_s`` is how long a write waits
    for another process holding the lock.
    """

    def __init__(self, path: str, *, timeout_s: float = 30.0, trust_stat: bool = True):
        if os.path.isdir(path):
            path = os.path.join(path, JOURNAL_NAME)
        self.path = os.path.abspath(path)
        self.trust_stat = trust_stat
        self._lock = threading.RLock()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; each write below is
            # an explicit BEGIN IMMEDIATE ... COMMIT. check_same_thread=False:
            # threads share this connection under self._lock.
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: cannot open the journal ({e})") from e
        try:
            self._setup(timeout_s)
        except BaseException as e:
            self._db.close()
            if not isinstance(e, sqlite3.DatabaseError):
                raise
            raise JournalError(f"{self.path}: not a usable farm journal ({e}); delete it to start a fresh "
                               "one (the next run then renders every track again)") from e

    def _setup(self, timeout_s: float) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        # Switching to WAL needs an exclusive lock and SQLite may answer "database is
        # locked" at once, without its busy handler, while another process opens the
        # same new journal (seen under load with several workers): retry it ourselves.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"could not switch to WAL mode (got {mode!r})")
        # FULL: a commit is on disk when it returns, so power loss cannot undo
        # a finished track (NORMAL in WAL mode could lose the last commits).
        db.execute("PRAGMA synchronous = FULL")
        with self._write():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: written by a newer farm (journal schema {version}, this farm "
                                   f"reads {SCHEMA_VERSION}); upgrade the farm or delete the journal")
            for stmt in _SCHEMA:
                db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- plumbing

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, committed on exit (rolled back on an exception).

        BEGIN IMMEDIATE takes the write lock up front, so two writers wait on
        the busy timeout instead of deadlocking on a read-to-write upgrade.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- hashing with the stat cache

    def hash_file(self, path: str) -> str:
        """The content hash of ``path``, from the cache when the file provably did not change."""
        path = os.path.abspath(path)
        started_ns = time.time_ns()  # before the stat: a write after this moment cannot hide
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self.trust_stat:
            with self._lock:
                row = self._db.execute(
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, hash, hashed_ns FROM files WHERE path = ?",
                    (path,)).fetchone()
            if row is not None and tuple(row[:5]) == ident and row[3] + RACY_WINDOW_NS <= row[6]:
                return row[5]
        digest = file_hash(path)
        st2 = os.stat(path)
        if (st2.st_dev, st2.st_ino, st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == ident:
            # Unchanged while we read it: worth caching (it is re-checked for raciness on use).
            with self._write() as db:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (path, *ident, digest, started_ns))
        return digest

    def input_hash(self, path: str) -> str:
        """The content hash of an input file (see :meth:`hash_file`).

        A missing or unreadable input gets ``"unreadable: <why>"``, which
        matches no content hash: submit the task anyway and its render returns
        the failure record that names the file (a failure is never "done").
        """
        try:
            return self.hash_file(path)
        except OSError as e:
            return f"unreadable: {e.strerror or e}"

    def settings_hash(self, task: RenderTask) -> str:
        """:func:`settings_hash`, hashing a user impulse response through the cache."""
        return settings_hash(task, ir_hash=self.hash_file)

    # -- the API

    def lookup(self, key: str) -> Entry | None:
        """The entry recorded under ``key`` (see :func:`task_key`), or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM tracks WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._entry(row)

    def stale_reason(self, task: RenderTask, input_hash: str, *, settings: str | None = None) -> str:
        """Why ``task`` must be rendered again ("" when it is done).

        Done means: the last record is ok, for the same input bytes and the
        same settings, and its output is still at its final path with the
        recorded size and content.
        """
        entry = self.lookup(task_key(task))
        if entry is None:
            return "not in the journal"
        if entry.status != STATUS_OK:
            return f"failed last time: {entry.reason}" if entry.reason else "failed last time"
        if entry.input_hash != input_hash:
            return "input changed"
        if entry.settings_hash != (settings or self.settings_hash(task)):
            return "settings changed"
        out = entry.output
        if out is None or os.path.abspath(out) != os.path.abspath(task.out_path):
            return "output path changed"
        try:
            st = os.stat(out)
        except FileNotFoundError:
            return f"output missing: {out}"
        if st.st_size != entry.output_size:
            return f"output changed: {out} is {st.st_size} bytes, recorded {entry.output_size}"
        if self.hash_file(out) != entry.output_hash:
            return f"output changed: {out} content differs from the recorded master"
        return ""

    def is_done(self, task: RenderTask, input_hash: str, *, settings: str | None = None) -> bool:
        """True when a rerun may skip ``task`` (see :meth:`stale_reason`)."""
        return self.stale_reason(task, input_hash, settings=settings) == ""

    def record(self, task: RenderTask, input_hash: str, result: TrackResult, *,
               settings: str | None = None, output_hash: str | None = None) -> Entry:
        """Record ``result`` for ``task`` in its own committed transaction.

        Call it only after the render returned (its output is then final).
        ``input_hash`` must be what was hashed *before* the task was submitted,
        and ``settings`` (optional) the settings hash taken then: if the input
        or an impulse response changed meanwhile, the next run sees a mismatch
        and renders again. An ok result's output is checked to be the task's
        final path, present, and is hashed here unless ``output_hash`` is
        given (e.g. computed by the worker right before its rename).

        Raises :class:`JournalError` when an ok result's output is not a file
        the client can see (a worker writing to a folder the client does not
        share, or a render that reported ok without committing its file).
        """
        settings_text = settings_json(task, ir_hash=self.hash_file)
        s_hash = settings or f"{HASH_ALGORITHM}:{hashlib.sha256(settings_text.encode()).hexdigest()}"
        out = size = out_hash = None
        status = STATUS_OK if result.ok else (result.status or STATUS_FAILED)
        if result.ok:
            out = os.path.abspath(result.output or "")
            if out != os.path.abspath(task.out_path):
                raise JournalError(f"{self.path}: track {task.track.row} ({task.track.source}) reported ok "
                                   f"with output {result.output!r}, not its final path {task.out_path!r}")
            if not os.path.isfile(out):
                raise JournalError(f"{self.path}: track {task.track.row} reported ok but the client cannot "
                                   f"see {out}; the output folder must be shared by the workers and the client")
            size = os.stat(out).st_size
            out_hash = output_hash or self.hash_file(out)
        doc = json.dumps(result.to_dict(), sort_keys=True, ensure_ascii=False, default=_json_default)
        now = time.time()
        key = task_key(task)
        with self._write() as db:
            db.execute(
                """INSERT INTO tracks (key, row, source, input_hash, settings_hash, settings, status, reason,
                                       result, output, output_size, output_hash, attempts,
                                       first_recorded, recorded)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET
                       row = excluded.row, source = excluded.source, input_hash = excluded.input_hash,
                       settings_hash = excluded.settings_hash, settings = excluded.settings,
                       status = excluded.status, reason = excluded.reason, result = excluded.result,
                       output = excluded.output, output_size = excluded.output_size,
                       output_hash = excluded.output_hash, attempts = tracks.attempts + 1,
                       recorded = excluded.recorded""",
                (key, task.track.row, os.path.abspath(task.track.source), input_hash, s_hash, settings_text,
                 status, result.reason, doc, out, size, out_hash, now, now))
            row = db.execute(f"SELECT {_COLUMNS} FROM tracks WHERE key = ?", (key,)).fetchone()
        return self._entry(row)

    def entries(self, keys: Iterable[str] | None = None) -> list[Entry]:
        """All entries (or those under ``keys``), in catalog row order."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM tracks ORDER BY row, key").fetchall()
        entries = [self._entry(r) for r in rows]
        if keys is not None:
            wanted = set(keys)
            entries = [e for e in entries if e.key in wanted]
        return entries

    def results(self, keys: Iterable[str] | None = None) -> list[TrackResult]:
        """The recorded results (or those under ``keys``: pass the current job's
        keys to leave out entries of rows since renamed or removed), in row order."""
        return [e.result for e in self.entries(keys)]

    def forget(self, key: str) -> None:
        """Drop one entry (its track renders again next time)."""
        with self._write() as db:
            db.execute("DELETE FROM tracks WHERE key = ?", (key,))

    @staticmethod
    def _entry(row) -> Entry:
        (key, row_no, source, input_hash, s_hash, settings, status, reason, result, output, size, out_hash,
         attempts, first, recorded) = row
        return Entry(key, row_no, source, input_hash, s_hash, settings, status, reason,
                     TrackResult.from_dict(json.loads(result)), output, size, out_hash, attempts, first, recorded)
