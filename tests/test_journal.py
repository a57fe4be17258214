"""farm.journal: round trips, rerun decisions, the stat cache, concurrency and SIGKILL safety.

The journal never looks inside audio, so outputs here are small byte files
written the way the render writes masters (temporary name, fsync, rename).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from farm import journal as jn
from farm.journal import Journal, JournalError, file_hash, settings_hash, task_key
from farm.records import (STATUS_FAILED, STATUS_OK, DeliverySpec, OutputSpec, RenderTask, TrackResult,
                          TrackSpec)
from kernels.params import ChainParams, LimiterParams, ReverbParams

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
OLD = 1_600_000_000  # an mtime far outside the racy window


# ---------------------------------------------------------------- helpers (also used by the child processes)

def make_task(folder: str, i: int, **changes) -> RenderTask:
    src = os.path.join(folder, "in", f"track{i:03d}.wav")
    out = os.path.join(folder, "out", f"{i:02d} - Artist - Title {i}.flac")
    task = RenderTask(
        track=TrackSpec(row=i + 1, source=src, tags={"title": f"Title {i}", "artist": "Sigur Rós",
                                                     "isrc": f"GBAYE05{i:05d}"}),
        chain=ChainParams(), output=OutputSpec(), delivery=DeliverySpec(), out_path=out, preset="streaming")
    return dataclasses.replace(task, **changes)


def make_input(task: RenderTask, content: bytes | None = None) -> str:
    os.makedirs(os.path.dirname(task.track.source), exist_ok=True)
    with open(task.track.source, "wb") as f:
        f.write(content if content is not None else f"input {task.track.source}".encode() * 100)
    return task.track.source


def fake_result(task: RenderTask, ok: bool = True) -> TrackResult:
    """The record a render of ``task`` returns (deterministic, so a test can rebuild it)."""
    if not ok:
        return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_FAILED,
                           reason=f"{task.track.source}: cannot decode", preset=task.preset)
    return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_OK, output=task.out_path,
                       preset=task.preset, input={"integrated_lufs": -20.5, "true_peak_dbtp": -3.25},
                       result={"integrated_lufs": -14.02, "true_peak_dbtp": -1.01, "lra_lu": 6.0},
                       gain_db=6.48, max_gain_reduction_db=1.5, checks={"loudness": True, "tags": True},
                       timings={"decode": 0.01, "chain": 0.2}, worker="w1", backend="cpu")


def fake_render(task: RenderTask, ok: bool = True) -> TrackResult:
    """Write the output as farm.audio does (temp name, fsync, rename) and return its record."""
    if not ok:
        return fake_result(task, ok=False)
    os.makedirs(os.path.dirname(task.out_path), exist_ok=True)
    tmp = task.out_path + ".partial"
    with open(tmp, "wb") as f:
        f.write(b"fLaC" + hashlib.sha256(task.out_path.encode()).digest() * 64)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, task.out_path)
    return fake_result(task)


def _child(journal_path: str, folder: str, start: str, count: str) -> None:
    """Child process body: render and record tasks start..start+count-1, announcing each commit."""
    with Journal(journal_path) as j:
        for i in range(int(start), int(start) + int(count)):
            task = make_task(folder, i)
            h = j.input_hash(make_input(task))
            j.record(task, h, fake_render(task))
            print(i, flush=True)


def spawn(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys, test_journal; test_journal._child(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


@pytest.fixture
def journal(folder):
    os.makedirs(os.path.join(folder, "out"), exist_ok=True)
    with Journal(os.path.join(folder, "out")) as j:
        yield j


def rendered(journal: Journal, folder: str, i: int = 0, **changes):
    """A task rendered ok and recorded; returns (task, input_hash)."""
    task = make_task(folder, i, **changes)
    make_input(task)
    os.utime(task.track.source, (OLD, OLD))
    h = journal.input_hash(task.track.source)
    journal.record(task, h, fake_render(task))
    return task, h


# ---------------------------------------------------------------- hashes and keys

def test_file_hash_is_sha256_of_the_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # several 1 MiB blocks and a tail
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert file_hash(str(p)) == "sha256:" + hashlib.sha256(data).hexdigest()


def test_settings_hash_is_stable_and_ignores_identity_only_fields(folder):
    a = make_task(folder, 0)
    assert settings_hash(a) == settings_hash(make_task(folder, 0))
    # Row number, backend and memory budget (whole-file or streamed: the same master) do not shape it.
    assert settings_hash(a) == settings_hash(
        dataclasses.replace(a, track=dataclasses.replace(a.track, row=99), backend="gpu", memory_budget_mb=512))
    # TOML "-1" and "-1.0" are the same setting; tag order and empty tags do not matter.
    ints = dataclasses.replace(a, chain=dataclasses.replace(
        a.chain, limiter=LimiterParams(ceiling_dbtp=-1, release_ms=100)))
    assert settings_hash(a) == settings_hash(ints)
    reordered = dict(reversed(list(a.track.tags.items())), label="")
    assert settings_hash(a) == settings_hash(dataclasses.replace(a, track=dataclasses.replace(a.track,
                                                                                              tags=reordered)))
    # Canonical JSON, never pickle: readable and parseable.
    doc = json.loads(jn.settings_json(a))
    assert doc["out_path"] == a.out_path and "row" not in doc["track"] and "backend" not in doc


@pytest.mark.parametrize("change", [
    lambda t: dict(chain=dataclasses.replace(t.chain, limiter=LimiterParams(ceiling_dbtp=-2.0))),
    lambda t: dict(output=OutputSpec(format="wav")),
    lambda t: dict(output=OutputSpec(bit_depth=24)),
    lambda t: dict(delivery=DeliverySpec(target_lufs=-16.0)),
    lambda t: dict(out_path=t.out_path.replace("Title", "Titel")),
    lambda t: dict(preset="apple-music"),
    lambda t: dict(track=dataclasses.replace(t.track, tags={**t.track.tags, "isrc": "USRC17607839"})),
    lambda t: dict(track=dataclasses.replace(t.track, target_lufs=-23.0)),
], ids=["chain", "format", "bit_depth", "delivery", "out_path", "preset", "tags", "target_override"])
def test_settings_hash_changes_with_every_setting(folder, change):
    a = make_task(folder, 0)
    assert settings_hash(a) != settings_hash(dataclasses.replace(a, **change(a)))


def test_settings_hash_follows_impulse_response_content(tmp_path):
    irs = tmp_path / "irs"
    irs.mkdir()
    (irs / "hall.wav").write_bytes(b"RIFF one")
    t = make_task(str(tmp_path), 0, ir_search_dirs=(str(irs),),
                  chain=dataclasses.replace(ChainParams(), reverb=ReverbParams(ir="hall.wav")))
    before = settings_hash(t)
    (irs / "hall.wav").write_bytes(b"RIFF two")  # same name, new room
    assert settings_hash(t) != before


def test_settings_hash_follows_the_match_reference_content(tmp_path):
    (tmp_path / "ref.wav").write_bytes(b"RIFF one")
    t = make_task(str(tmp_path), 0, ir_search_dirs=(str(tmp_path),))
    t = dataclasses.replace(t, track=dataclasses.replace(t.track, reference="ref.wav"))
    before = settings_hash(t)
    (tmp_path / "ref.wav").write_bytes(b"RIFF two")  # same name, another reference master
    assert settings_hash(t) != before


def test_fields_at_their_defaults_stay_out_of_the_settings(folder):
    """A field added later with a default (a new stage, bypassed; a new output option)
    must not change the hash of tasks that do not use it: no catalog re-renders on upgrade."""
    a = make_task(folder, 0)
    doc = json.loads(jn.settings_json(a))
    assert "copies" not in doc["output"] and "multiband" not in doc.get("chain", {})
    bwf = dataclasses.replace(a, output=dataclasses.replace(a.output, bwf=True))
    assert settings_hash(bwf) != settings_hash(a)
    assert settings_hash(dataclasses.replace(bwf, output=dataclasses.replace(bwf.output, bwf=False))) == \
        settings_hash(a)
    untagged = dataclasses.replace(a, track=dataclasses.replace(a.track, tags={}))
    blank = dataclasses.replace(a, track=dataclasses.replace(a.track, tags={"title": ""}))
    assert settings_hash(untagged) == settings_hash(blank) != settings_hash(a)


def test_task_key_is_input_and_output_not_row(folder):
    a = make_task(folder, 0)
    assert task_key(a) == task_key(dataclasses.replace(a, track=dataclasses.replace(a.track, row=7)))
    assert json.loads(task_key(a)) == [a.track.source, a.out_path]
    two_releases = dataclasses.replace(a, out_path=a.out_path.replace("out", "out2"))
    assert task_key(a) != task_key(two_releases)


# ---------------------------------------------------------------- record / lookup

def test_record_lookup_round_trip(journal, folder):
    task, h = rendered(journal, folder)
    e = journal.lookup(task_key(task))
    assert e.result == fake_result(task)  # the whole TrackResult survives JSON
    assert (e.status, e.input_hash, e.settings_hash) == (STATUS_OK, h, settings_hash(task))
    assert e.output == task.out_path and e.output_size == os.path.getsize(task.out_path)
    assert e.output_hash == file_hash(task.out_path) and e.attempts == 1 and e.row == 1
    assert json.loads(e.settings)["track"]["tags"]["artist"] == "Sigur Rós"
    time.sleep(0.01)
    journal.record(task, h, fake_result(task))
    e2 = journal.lookup(task_key(task))
    assert e2.attempts == 2 and e2.first_recorded == e.first_recorded and e2.recorded > e.recorded
    assert journal.lookup("no such key") is None


def test_journal_in_folder_is_wal_and_persists(folder):
    out = os.path.join(folder, "out")
    os.makedirs(out)
    with Journal(out) as j:
        task, _ = rendered(j, folder)
    path = os.path.join(out, jn.JOURNAL_NAME)
    assert os.path.isfile(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with Journal(path) as j:
        assert [r.row for r in j.results()] == [1]


def test_results_in_row_order_and_filtered_by_keys(journal, folder):
    tasks = [rendered(journal, folder, i)[0] for i in (2, 0, 1)]
    assert [r.row for r in journal.results()] == [1, 2, 3]
    assert [r.row for r in journal.results([task_key(tasks[0])])] == [3]


# ---------------------------------------------------------------- rerun decisions

def test_same_task_and_input_is_done(journal, folder):
    task, h = rendered(journal, folder)
    assert journal.stale_reason(task, h) == ""
    assert journal.is_done(task, journal.input_hash(task.track.source))


def test_changed_settings_is_not_done(journal, folder):
    task, h = rendered(journal, folder)
    louder = dataclasses.replace(task, delivery=DeliverySpec(target_lufs=-9.0))
    assert journal.stale_reason(louder, h) == "settings changed"


def test_changed_input_bytes_is_not_done(journal, folder):
    task, h = rendered(journal, folder)
    size = os.path.getsize(task.track.source)
    make_input(task, b"X" * size)  # same size ...
    os.utime(task.track.source, (OLD, OLD))  # ... and the same mtime: only ctime and content differ
    h2 = journal.input_hash(task.track.source)
    assert h2 != h
    assert journal.stale_reason(task, h2) == "input changed"


def test_deleted_or_altered_output_is_not_done(journal, folder):
    task, h = rendered(journal, folder)
    with open(task.out_path, "r+b") as f:  # same size, one byte different
        f.seek(10)
        f.write(b"\x00")
    assert journal.stale_reason(task, h).startswith("output changed")
    with open(task.out_path, "ab") as f:
        f.write(b"more")
    assert "bytes, recorded" in journal.stale_reason(task, h)
    os.unlink(task.out_path)
    assert journal.stale_reason(task, h).startswith("output missing")


def test_failed_track_is_not_done(journal, folder):
    task = make_task(folder, 0)
    h = journal.input_hash(make_input(task))
    e = journal.record(task, h, fake_render(task, ok=False))
    assert e.status == STATUS_FAILED and e.output is None
    assert journal.stale_reason(task, h).startswith("failed last time: ")
    assert not journal.is_done(task, h)


def test_unknown_track_and_missing_input(journal, folder):
    task = make_task(folder, 5)
    h = journal.input_hash(task.track.source)  # never created
    assert h.startswith("unreadable: ")
    assert journal.stale_reason(task, h) == "not in the journal"


def test_ok_without_a_final_output_is_refused(journal, folder):
    task = make_task(folder, 0)
    h = journal.input_hash(make_input(task))
    ghost = dataclasses.replace(fake_render(task), output=task.out_path)
    os.unlink(task.out_path)
    with pytest.raises(JournalError, match="cannot see"):
        journal.record(task, h, ghost)
    elsewhere = dataclasses.replace(ghost, output=task.out_path + ".partial")
    with pytest.raises(JournalError, match="not its final path"):
        journal.record(task, h, elsewhere)
    assert journal.lookup(task_key(task)) is None


# ---------------------------------------------------------------- the stat cache

def test_input_hash_cache_trusts_only_old_unchanged_files(journal, folder, monkeypatch):
    task = make_task(folder, 0)
    src = make_input(task)
    calls = []
    real = jn.file_hash
    monkeypatch.setattr(jn, "file_hash", lambda p: calls.append(p) or real(p))
    # Freshly written: within the racy window, so every call rehashes.
    journal.input_hash(src)
    journal.input_hash(src)
    assert len(calls) == 2
    os.utime(src, (OLD, OLD))
    h = journal.input_hash(src)
    assert journal.input_hash(src) == h and len(calls) == 3  # second call served from the cache
    make_input(task, b"Y" * os.path.getsize(src))
    os.utime(src, (OLD, OLD))  # content swapped under the same size and mtime
    assert journal.input_hash(src) != h and len(calls) == 4
    with Journal(journal.path, trust_stat=False) as strict:
        strict.input_hash(src)
        strict.input_hash(src)
    assert len(calls) == 6


def test_corrupt_journal_says_how_to_recover(tmp_path):
    bad = tmp_path / jn.JOURNAL_NAME
    bad.write_bytes(b"this is not sqlite, just junk " * 100)
    with pytest.raises(JournalError, match="delete it"):
        Journal(str(bad))


# ---------------------------------------------------------------- concurrency and crashes

def test_threads_share_one_journal(journal, folder):
    errors = []

    def worker(base):
        try:
            for i in range(base, base + 15):
                rendered(journal, folder, i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(b,)) for b in (0, 15, 30, 45)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [r.row for r in journal.results()] == list(range(1, 61))


def test_processes_write_one_journal_concurrently(folder):
    path = os.path.join(folder, "out", jn.JOURNAL_NAME)
    procs = [spawn(path, folder, start, 20) for start in (0, 20)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with Journal(path) as j:
        assert sorted(e.row for e in j.entries()) == list(range(1, 41))


@pytest.mark.parametrize("when", [("line", 3), ("line", 11), ("sleep", 0.05), ("sleep", 0.4)],
                         ids=["after-3", "after-11", "during-start", "mid-run"])
def test_sigkill_mid_run_keeps_exactly_the_committed_records(folder, when):
    path = os.path.join(folder, "out", jn.JOURNAL_NAME)
    p = spawn(path, folder, 0, 100_000)
    how, n_or_s = when
    if how == "line":
        while (line := p.stdout.readline()) and int(line) < n_or_s - 1:
            pass
        assert line, p.stderr.read()
    else:
        time.sleep(n_or_s)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    announced = [int(line) for line in p.stdout.read().split()]  # what it printed before dying
    seen = max(announced, default=int(line) if how == "line" else -1)
    p.stdout.close()
    p.stderr.close()
    assert p.returncode == -signal.SIGKILL

    if os.path.exists(path):  # killed before it was created is fine too
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    with Journal(path) as j:
        entries = j.entries()
        n = len(entries)
        # Records are all or nothing and in order: every announced commit is there,
        # plus at most the one whose announcement the kill cut off.
        assert [e.row for e in entries] == list(range(1, n + 1))
        assert seen + 1 <= n <= seen + 2, (seen, n)
        for e in entries:
            task = make_task(folder, e.row - 1)
            assert e.result == fake_result(task)
            assert j.is_done(task, j.input_hash(task.track.source))
        # The next track was not recorded, whatever state its output is in.
        nxt = make_task(folder, n)
        assert not j.is_done(nxt, j.input_hash(nxt.track.source))
        # And the journal keeps working.
        rendered(j, folder, n)
        assert len(j.entries()) == n + 1


def test_repeated_kills_then_resume(folder):
    """Kill, resume where the journal says, kill again: never a gap, a duplicate or a torn row."""
    import random

    rng = random.Random(1770)
    path = os.path.join(folder, "out", jn.JOURNAL_NAME)
    n = 0
    for _ in range(4):
        p = spawn(path, folder, n, 100_000)
        assert p.stdout.readline(), p.stderr.read()  # running: past imports and the first record
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()
        with Journal(path) as j:
            rows = [e.row for e in j.entries()]
        assert rows == list(range(1, len(rows) + 1)) and len(rows) > n
        n = len(rows)
