"""The store's WAL kept within its budget (agent/store/wal.py), on real SQLite files: checkpointed and
truncated once over `store.wal_max_bytes`, never for a few commits below the floor, a checkpoint that
another reader blocks counted and retried, SQLite's own checkpoint set to the cap (again after a
config swap changed it). The disk-nearly-full side (a quarter of the free space) is
tests/test_durability_diskfull.py on a real small file system."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from structlog.testing import capture_logs

from agent.store import Store
from agent.store.wal import WAL_FLOOR_BYTES, WalBudget
from tests.test_store import make_batch

KIB = 1024


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_wal_is_checkpointed_and_truncated_once_over_its_cap(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**8, wal_max_bytes=200 * KIB) as s:
        assert s.wal.status() == {"bytes": wal_size(path), "limit_bytes": 200 * KIB, "max_bytes": 200 * KIB, "checkpoints": 0,
                                  "checkpoints_incomplete": 0, "last_error": None}
        sizes = []
        for i in range(30):
            s.put(make_batch(i, size=20 * KIB))
            sizes.append(wal_size(path))
            assert sizes[-1] <= 200 * KIB, f"after put {i} the WAL is {sizes[-1]} B, over its cap"
        st = s.wal.status()
        assert st["checkpoints"] >= 2 and st["checkpoints_incomplete"] == 0 and st["last_error"] is None
        assert 0 in sizes, "a checkpoint truncates the WAL"
        assert max(sizes) > WAL_FLOOR_BYTES, "between checkpoints the WAL grows up to its cap"
        assert st["limit_bytes"] == 200 * KIB and st["bytes"] == wal_size(path)
        assert [b.id for b in s.next_batches(30)] == [f"b{i:04d}" for i in range(30)], "nothing lost by checkpoints"


def test_a_wal_below_the_floor_is_left_alone(tmp_path: Path) -> None:
    """A few commits never cost a checkpoint of ours, whatever the cap (SQLite's own runs at the cap);
    above the floor a cap below it is the floor."""
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**8, wal_max_bytes=4 * KIB) as s:
        for i in range(5):
            s.put(make_batch(i, size=KIB))
        assert s.wal.checkpoints == 0 and 0 < wal_size(path) <= WAL_FLOOR_BYTES
        s.put(make_batch(9, size=100 * KIB))  # one commit writes more than the floor
        assert s.wal.checkpoints == 1 and s.wal.limit == WAL_FLOOR_BYTES and wal_size(path) == 0


def test_sqlites_own_checkpoint_follows_the_cap_also_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**8, wal_max_bytes=400 * KIB) as s:
        page = s.db.execute("PRAGMA page_size").fetchone()[0]
        assert s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 400 * KIB // page
        assert s.db.execute("PRAGMA journal_size_limit").fetchone()[0] == 400 * KIB
        s.wal.max_bytes = 100 * KIB  # what a config swap does (agent/app.py)
        s.put(make_batch(1))
        assert s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 100 * KIB // page
        assert s.db.execute("PRAGMA journal_size_limit").fetchone()[0] == 100 * KIB
    with Store(tmp_path / "t.db", max_bytes=10**8, wal_max_bytes=100) as s:
        assert s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1, "at least one page"


def test_a_reader_that_blocks_the_checkpoint_is_counted_and_the_next_write_retries(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**8, wal_max_bytes=100 * KIB) as s:
        s.put(make_batch(0, size=20 * KIB))
        s.db.execute("PRAGMA busy_timeout=20")  # a blocked checkpoint waits for the reader this long (5 s in the agent)
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM batches").fetchone()  # a read transaction pins the WAL
        with capture_logs() as logs:
            for i in range(1, 12):
                s.put(make_batch(i, size=20 * KIB))
        st = s.wal.status()
        assert st["checkpoints_incomplete"] >= 2 and st["checkpoints"] >= st["checkpoints_incomplete"]
        assert st["last_error"].startswith("busy: ") and "another connection reads" in st["last_error"]
        incomplete = [e for e in logs if e["event"] == "store_wal_checkpoint_incomplete"]
        assert len(incomplete) == st["checkpoints_incomplete"], "each says how far it got (the pages differ)"
        assert incomplete[-1]["error"] == st["last_error"] and incomplete[0]["why"].startswith("WAL ")
        assert "over its budget of 102400 B" in incomplete[0]["why"] and incomplete[0]["path"] == f"{path}-wal"
        assert incomplete[0]["action"] == "the WAL stays valid; checkpointing again after the next write"
        with capture_logs() as logs:
            assert s.wal.checkpoint(s.db, "again") is False
        assert logs == [], "the same error again is not logged again"
        assert s.wal.incomplete == st["checkpoints_incomplete"] + 1
        reader.execute("COMMIT")
        reader.close()
        with capture_logs() as logs:
            s.put(make_batch(99, size=20 * KIB))
        assert s.wal.last_error is None and wal_size(path) == 0, "the next write checkpoints it"
        (checkpointed,) = logs
        assert (checkpointed["event"], checkpointed["path"]) == ("store_wal_checkpointed", f"{path}-wal")
        assert checkpointed["why"].startswith("WAL ") and checkpointed["why"].endswith(" B over its budget of 102400 B")
        with capture_logs() as logs:
            assert s.wal.checkpoint(s.db, "again") is True
        assert logs == [], "a checkpoint after a good one is not logged"
        assert s.stats().batches == 13


def test_a_checkpoint_that_fails_never_raises(tmp_path: Path) -> None:
    wal = WalBudget(tmp_path / "s.db")
    db = sqlite3.connect(tmp_path / "s.db")
    db.close()
    assert wal.status()["bytes"] == 0, "no WAL yet"
    with capture_logs() as logs:
        assert wal.checkpoint(db, "test") is False  # a closed connection: sqlite3.ProgrammingError
    assert wal.incomplete == 1 and wal.checkpoints == 1 and "closed" in (wal.last_error or "")
    assert [(e["error"], e["why"]) for e in logs] == [(wal.last_error, "test")]


def test_the_budget_is_the_cap_or_a_quarter_of_the_room(tmp_path: Path) -> None:
    wal = WalBudget(tmp_path / "s.db", max_bytes=10**18)
    st = os.statvfs(tmp_path)
    room = st.f_bavail * st.f_frsize
    quarter = (room + 10**15) // 4
    budget = wal.budget(10**15)
    assert abs(budget - quarter) < 64 * 1024 * 1024, "a quarter of free space plus the WAL itself"
    assert type(budget) is int, "a number of bytes (status shows it)"
    assert WalBudget(tmp_path / "s.db", max_bytes=500 * KIB).budget(10**15) == 500 * KIB, "at most the cap"
    assert WalBudget(tmp_path / "s.db", max_bytes=KIB).budget(10**15) == WAL_FLOOR_BYTES, "at least the floor"
    assert WalBudget(tmp_path / "gone" / "s.db", max_bytes=300 * KIB).budget(0) == 300 * KIB, "no file system: the cap"
