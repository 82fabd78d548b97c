"""The store when the disk misbehaves: corrupt files moved aside, disk full and read-only file systems.

Disk full and read-only use a real, size-limited tmpfs mounted for the test (we run as root on CI);
the test is skipped with a clear reason where mounting is not permitted.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent.model import Priority
from agent.store import Store, StoreCorruptError
from agent.store.sqlite import EXPECTED_COLUMNS
from tests.conftest import fill_disk
from tests.test_store import make_batch


def _fill(path: Path, n: int = 3) -> None:
    with Store(path, max_bytes=10**6) as s:
        for i in range(n):
            s.put(make_batch(i))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_schema"])
def test_corrupt_file_is_moved_aside_and_a_fresh_store_starts(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "store.db"
    if damage == "garbage":
        path.write_bytes(os.urandom(8192))
    elif damage == "truncated":
        with Store(path, max_bytes=10**8) as s:
            for i in range(200):
                s.put(make_batch(i, size=4000))
        data = path.read_bytes()
        assert len(data) > 100_000
        path.write_bytes(data[: len(data) // 3])
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE batches (id TEXT, payload BLOB)")
        db.execute("INSERT INTO batches VALUES ('x', x'00')")
        db.commit()
        db.close()
    original = path.read_bytes()
    from structlog.testing import capture_logs

    with capture_logs() as logs, Store(path, max_bytes=10**6) as s:
        (moved_log,) = [e for e in logs if e["event"] == "store_corrupt_moved_aside"]
        if damage == "wrong_schema":
            assert moved_log["reason"] == (f"table batches has columns ('id', 'payload'), expected {EXPECTED_COLUMNS}")
        assert len(s.quarantined) == 1
        moved = s.quarantined[0]
        assert moved.name.startswith("store.db.corrupt-") and moved.read_bytes() == original
        assert s.stats().counters["corrupt_files_moved"] == 1 and s.stats().batches == 0
        s.put(make_batch(1))  # the fresh store works
    with Store(path, max_bytes=10**6) as s:  # and is not moved aside again on the next start
        assert s.quarantined == [] and [b.id for b in s.next_batches(5)] == ["b0001"]


def test_corruption_found_during_operation(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    s = Store(path, max_bytes=10**8)
    for i in range(100):
        s.put(make_batch(i, size=4000))
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as fh:  # overwrite the table's pages behind SQLite's back
        fh.seek(4096)
        fh.write(os.urandom(200_000))
    s.db.execute("PRAGMA shrink_memory")  # drop SQLite's page cache so it reads the damaged pages
    with pytest.raises(StoreCorruptError):
        for _ in range(3):
            s.next_batches(200)
            s.stats()
            s.put(make_batch(900, size=4000))
    assert len(s.quarantined) == 1
    s.put(make_batch(901))
    assert [b.id for b in s.next_batches(5)] == ["b0901"]
    assert s.stats().counters["corrupt_files_moved"] == 1
    s.close()


@pytest.mark.durability
def test_disk_full_then_recovery_on_a_real_small_fs(small_fs: Path) -> None:
    path = small_fs / "store.db"
    s = Store(path, max_bytes=100 * 10**6)
    for i in range(5):
        s.put(make_batch(i, size=20_000))
    fill_disk(small_fs / "ballast")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for i in range(5, 200):
            s.put(make_batch(i, size=20_000))
    st = s.stats()
    assert 5 <= st.batches < 200 and st.counters["stored_batches"] == st.batches  # counters match rows
    os.remove(small_fs / "ballast")
    s.put(make_batch(500, size=20_000))  # recovery: the same connection writes again
    assert s.next_batches(1000)[-1].id == "b0500"
    s.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.durability
def test_read_only_fs_then_recovery(small_fs: Path) -> None:
    """A file system that turned read-only (what ext4 does on I/O errors): a clear error, data kept, recovery.

    Linux refuses to remount a file system read-only while a file on it is open for writing, so the store
    is closed first, as after an agent restart on a file system that came up read-only.
    """
    path = small_fs / "store.db"
    with Store(path, max_bytes=10**6) as s:
        s.put(make_batch(1, Priority.high))
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        s = Store(path, max_bytes=10**6)  # does not raise: the agent must start and keep collecting
        assert s.open_error and "store.db" in s.open_error
        with pytest.raises(sqlite3.OperationalError):
            s.put(make_batch(2))
        with pytest.raises(sqlite3.OperationalError):
            s.next_batches(1)
        assert not list(small_fs.glob("*.corrupt-*"))  # a read-only disk is not mistaken for corruption
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    s.put(make_batch(3))  # the same object recovers once the file system is writable, no restart
    assert s.open_error is None
    assert [b.id for b in s.next_batches(5)] == ["b0001", "b0003"]
    s.close()


def test_agent_starts_on_a_corrupt_store_and_says_so(tmp_path: Path) -> None:
    """The real agent on a garbage store file: moved aside with a clear log line, fresh store, counted in status."""
    import json

    import yaml

    from tests.conftest import DATA, run_cli

    state = tmp_path / "state"
    state.mkdir()
    (state / "store.db").write_bytes(b"this is not a database" * 500)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(state), "batching": {"max_age_s": 0.2},
        "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(DATA / "edge.log")}]}))
    moved = []
    for _ in range(2):  # a second start finds a healthy store: no loop of moving files aside
        res = run_cli("run", "--config", str(config))
        assert res.returncode == 0, res.stderr[-2000:]
        events = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")]
        moved.append([e for e in events if e["event"] == "store_corrupt_moved_aside"])
    assert len(moved[0]) == 1 and moved[0][0]["moved_to"].startswith(str(state / "store.db.corrupt-"))
    assert moved[1] == []
    assert len(list(state.glob("store.db.corrupt-*"))) == 1
    human = run_cli("status", "--config", str(config)).stdout
    assert "corrupt store files moved aside: 1" in human
