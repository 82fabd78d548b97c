"""What the store shows (`vehicle-agent status`, the twin's reported store section) and how it names
what it set aside, on real SQLite files: depth by priority, the oldest pending batch's age, counters
(damaged values read as 0, never crash a status), the quarantine listing, the read-only reader used
while the agent is stopped, and the names corrupt files are moved aside under."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.model import Priority
from agent.store import Store, StoreCorruptError, is_corrupt, read_stats
from agent.store.sqlite import QUARANTINE_LISTED, move_aside
from tests.test_store import make_batch

T0 = 1_795_000_000.0


def filled(path: Path) -> Store:
    s = Store(path, max_bytes=10**6, wallclock=lambda: T0)
    s.put(make_batch(1, Priority.low, size=100, created=T0 - 10))
    s.put(make_batch(2, Priority.high, size=200, created=T0 - 5))
    s.put(make_batch(3, Priority.high, size=300, created=T0 - 1))
    return s


def test_depth_by_priority_age_and_quarantine_as_status_shows_them(tmp_path: Path) -> None:
    with filled(tmp_path / "s.db") as s, capture_logs() as logs:
        q = s.quarantine("b0003", "the sink could not prepare it")
        assert q is not None and (q.id, q.priority, q.samples, q.bytes, q.quarantined, q.reason) == (
            "b0003", Priority.high, 13, 300, T0, "the sink could not prepare it")
        shown = s.stats().as_dict(now=T0 + 0.12345)
    (said,) = logs
    assert said == {"event": "batch_quarantined", "log_level": "error", "batch_id": "b0003", "priority": "high",
                    "samples": 13, "bytes": 300, "reason": "the sink could not prepare it", "discarded_from_quarantine": 0,
                    "path": str(tmp_path / "s.db"),
                    "action": "not sent; kept in the store's quarantine table; the queue goes on"}
    assert shown == {
        "batches": 2, "samples": 11 + 12, "bytes": 300,
        "by_priority": {"low": {"batches": 1, "samples": 11, "bytes": 100},
                        "normal": {"batches": 0, "samples": 0, "bytes": 0},
                        "high": {"batches": 1, "samples": 12, "bytes": 200}},
        "oldest_pending_age_s": 10.123,
        "counters": {"stored_batches": 3, "stored_samples": 36, "stored_bytes": 600,
                     "quarantined_batches": 1, "quarantined_samples": 13, "quarantined_bytes": 300},
        "quarantine": [{"id": "b0003", "priority": "high", "samples": 13, "bytes": 300, "quarantined": T0,
                        "reason": "the sink could not prepare it"}]}


def test_an_empty_store_shows_no_age_and_its_age_runs_on_the_wall_clock(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6) as s:
        assert s.stats().as_dict()["oldest_pending_age_s"] is None
        s.put(make_batch(1, created=time.time() - 100))
        assert 100 <= s.stats().as_dict()["oldest_pending_age_s"] < 160, "no `now`: the wall clock's"


def test_a_quarantined_batch_frees_its_room(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=3000) as s:
        for i in range(3):
            s.put(make_batch(i))
        s.quarantine("b0001", "test")
        assert s.put(make_batch(3)) == [], "the quarantined batch's bytes are free again"
        assert s.put(make_batch(4)) != [], "and only its 1000 B"
        assert s.stats().batches == 3
    with Store(tmp_path / "n.db", max_bytes=10**6, max_batches=3) as s:
        for i in range(3):
            s.put(make_batch(i))
        s.quarantine("b0001", "test")
        assert s.put(make_batch(3)) == [], "and its place in the batch count"
        assert [e.id for e in s.put(make_batch(4))] == ["b0000"]


def test_the_quarantine_lists_the_newest(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6) as s:
        for i in range(QUARANTINE_LISTED + 2):
            s.put(make_batch(i, size=10))
            s.quarantine(f"b{i:04d}", f"reason {i}")
        listed = s.stats().quarantine
    assert len(listed) == QUARANTINE_LISTED and listed[0].id == f"b{QUARANTINE_LISTED + 1:04d}"
    assert [q.reason for q in listed[:2]] == [f"reason {QUARANTINE_LISTED + 1}", f"reason {QUARANTINE_LISTED}"]


def test_damaged_rows_and_counters_read_as_low_and_zero(tmp_path: Path) -> None:
    """SQLite keeps any value in any column: a status must not crash on a damaged row, nor count it twice."""
    path = tmp_path / "s.db"
    with filled(path) as s:
        pass
    db = sqlite3.connect(path)
    db.execute("UPDATE batches SET priority = 99 WHERE id = 'b0002'")          # no priority the agent writes
    db.execute("UPDATE batches SET sample_count = 2.5 WHERE id = 'b0003'")  # no count the agent writes
    db.execute("UPDATE counters SET value = 'lots' WHERE name = 'stored_bytes'")
    db.commit()
    db.close()
    st = read_stats(path)
    assert st.depth["low"] == {"batches": 2, "samples": 11 + 12, "bytes": 300}, "low and the damaged priority, added"
    assert st.depth["high"] == {"batches": 1, "samples": 0, "bytes": 300}
    assert st.counters["stored_bytes"] == 0 and st.counters["stored_batches"] == 3
    with Store(path, max_bytes=10**6, wallclock=lambda: T0) as s:
        q = s.quarantine("b0003", "damaged")
        assert q is not None and (q.priority, q.samples, q.bytes) == (Priority.high, 0, 300)
        assert s.stats().counters.get("quarantined_samples", 0) == 0, "a damaged count counts nothing"


def test_read_stats_is_what_the_running_store_shows_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with filled(path) as s:
        s.quarantine("b0001", "test")
        live = s.stats()
    before = path.read_bytes()
    assert read_stats(path) == live
    assert path.read_bytes() == before


def test_read_stats_of_a_store_from_before_the_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE batches (id TEXT, priority INTEGER, sample_count INTEGER, size INTEGER, created REAL);"
                     "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                     "INSERT INTO batches VALUES ('a', 1, 5, 50, 1.5); INSERT INTO counters VALUES ('sent_batches', 2);")
    db.close()
    st = read_stats(path)
    assert (st.batches, st.samples, st.bytes, st.oldest_created, st.counters) == (1, 5, 50, 1.5, {"sent_batches": 2})
    assert st.quarantine == [] and st.as_dict(now=2.0)["quarantine"] == []


def test_corrupt_files_are_moved_aside_under_distinct_timestamped_names(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    names = []
    for n in range(3):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").write_text(f"{n}{suffix}")
        with capture_logs() as logs:
            names.append(move_aside(path, f"reason {n}", now=T0))
        assert [(e["event"], e["path"], e["moved_to"], e["reason"]) for e in logs] == [
            ("store_corrupt_moved_aside", str(path), str(names[-1]), f"reason {n}")]
        assert "fresh store" in logs[0]["action"] and "kept" in logs[0]["action"]
        assert not any(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(T0))
    assert stamp == "20261118T110640Z"
    assert [p.name for p in names] == [f"store.db.corrupt-{stamp}", f"store.db.corrupt-{stamp}-2",
                                       f"store.db.corrupt-{stamp}-3"]
    for n, moved in enumerate(names):
        assert [Path(f"{moved}{s}").read_text() for s in ("", "-wal", "-shm")] == [f"{n}", f"{n}-wal", f"{n}-shm"]
    path.write_text("x")
    now = move_aside(path, "no time given")
    moved_at = time.mktime(time.strptime(now.name.removeprefix("store.db.corrupt-"), "%Y%m%dT%H%M%SZ")) - time.timezone
    assert abs(moved_at - time.time()) < 60, "stamped with the time it was moved"


def test_only_corruption_moves_a_store_aside(tmp_path: Path) -> None:
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    corrupt.sqlite_errorcode = 11  # type: ignore[attr-defined]
    assert is_corrupt(corrupt) and is_corrupt(StoreCorruptError("x"))
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert not is_corrupt(full) and not is_corrupt(sqlite3.DatabaseError("no code")) and not is_corrupt(OSError(5))
    with Store(tmp_path / "s.db", max_bytes=10**6) as s:
        s.put(make_batch(1))
        assert s.recover_if_corrupt(full) is False
        assert s.quarantined == [] and [b.id for b in s.next_batches(5)] == ["b0001"]
        with capture_logs() as logs:
            assert s.recover_if_corrupt(corrupt) is True
        assert len(s.quarantined) == 1 and s.quarantined[0].name.startswith("s.db.corrupt-")
        assert [e["reason"] for e in logs if e["event"] == "store_corrupt_moved_aside"] == [
            "database disk image is malformed"]
        assert s.next_batches(5) == [] and s.stats().counters == {"corrupt_files_moved": 1}
        s.put(make_batch(2))
        assert [b.id for b in s.next_batches(5)] == ["b0002"]


CHECKSUM = "payload does not match its checksum (damaged on disk)"
PRIORITY = "priority is not one the agent writes (damaged on disk)"
WRONG_TYPE = "a column holds a value of the wrong type (damaged on disk)"


@pytest.mark.parametrize(("damage", "reason"), [
    ("payload = x'00'", CHECKSUM), ("priority = 99", PRIORITY), ("priority = -1", PRIORITY), ("priority = 'x'", PRIORITY),
    ("vehicle = x'00'", WRONG_TYPE), ("event = x'7b7d'", WRONG_TYPE), ("sample_count = 1.5", WRONG_TYPE),
    ("created = 'now'", WRONG_TYPE), ("size = 'big'", WRONG_TYPE), ("buses = x'ff'", WRONG_TYPE)])
def test_a_damaged_row_is_quarantined_with_its_reason(tmp_path: Path, damage: str, reason: str) -> None:
    path = tmp_path / "s.db"
    with filled(path) as s:
        pass
    db = sqlite3.connect(path)
    db.execute(f"UPDATE batches SET {damage} WHERE id = 'b0002'")
    db.commit()
    db.close()
    with Store(path, max_bytes=10**6, wallclock=lambda: T0) as s:
        assert [b.id for b in s.next_batches(5)] == ["b0003", "b0001"]
        (q,) = s.stats().quarantine
    assert (q.id, q.reason, q.quarantined) == ("b0002", reason, T0)


def test_the_quarantine_trims_as_many_oldest_as_its_bound_needs(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6, quarantine_max_bytes=2500) as s:
        s.put(make_batch(1, size=1000))
        s.put(make_batch(2, size=1500))
        s.put(make_batch(3, size=2000))
        s.quarantine("b0001", "x")
        s.quarantine("b0002", "x")
        assert [q.id for q in s.stats().quarantine] == ["b0002", "b0001"], "exactly the bound: both kept"
        with capture_logs() as logs:
            s.quarantine("b0003", "x")
        assert [q.id for q in s.stats().quarantine] == ["b0003"], "2000 B fit only once both older ones go"
        assert [e["discarded_from_quarantine"] for e in logs if e["event"] == "batch_quarantined"] == [2]
        assert s.stats().counters["quarantine_discarded_batches"] == 2
