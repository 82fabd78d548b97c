"""The memory spill in front of the store (agent/store/spill.py): while the store file cannot be
written, closed batches wait in memory, bounded, oldest dropped and counted; once it can, they are
committed in their order before anything newer.

The store is made unwritable for real: its path is a directory, so SQLite cannot open it (what a
state partition that is not mounted yet, or a file replaced by a folder, looks like); removing the
directory lets the same objects recover."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.model import Priority
from agent.store import Store
from agent.store.spill import SpillingStore
from tests.test_store import make_batch


def blocked_store(tmp_path: Path, **kwargs) -> tuple[Store, Path]:
    """A store whose file cannot be opened until the returned directory is removed."""
    path = tmp_path / "store.db"
    path.mkdir(parents=True)
    return Store(path, max_bytes=10**6, **kwargs), path


def test_batches_wait_in_memory_and_drain_in_order_once_the_store_opens(tmp_path: Path) -> None:
    store, blocker = blocked_store(tmp_path)
    stored = []
    spill = SpillingStore(store, max_bytes=10_000, on_stored=lambda: stored.append(store.total_batches))
    assert spill.error is not None and "store.db" in spill.error, "the store's open error is shown from the start"
    assert not spill
    with capture_logs() as logs:
        for i in range(3):
            spill.put(make_batch(i))
    assert spill and [b.id for b in spill.spill] == ["b0000", "b0001", "b0002"]
    assert spill.status() == {"batches": 3, "bytes": 3000, "max_bytes": 10_000, "dropped_batches": 0,
                              "dropped_samples": 0}
    failed = [e for e in logs if e["event"] == "store_write_failed"]
    assert len(failed) == 1, "one distinct error is logged once, not once a batch"
    assert failed[0]["path"] == str(blocker) and failed[0]["error"] == spill.error
    assert failed[0]["action"] == "keeping batches in memory until the store is writable"
    assert stored == []

    blocker.rmdir()
    with capture_logs() as logs:
        spill.put(make_batch(3))
    assert not spill and spill.error is None and spill.bytes == 0
    assert [e["path"] for e in logs if e["event"] == "store_recovered"] == [str(blocker)]
    assert stored == [1, 2, 3, 4], "each commit wakes the forwarder"
    assert [b.id for b in store.next_batches(10)] == ["b0000", "b0001", "b0002", "b0003"], "older first"
    assert store.stats().counters["stored_batches"] == 4 and spill.status()["dropped_batches"] == 0
    store.close()


def test_retry_moves_the_spill_into_the_store_without_a_new_batch(tmp_path: Path) -> None:
    """The agent's housekeeping retries the spill: what waits is committed even if nothing new comes."""
    store, blocker = blocked_store(tmp_path)
    spill = SpillingStore(store, max_bytes=10_000)
    spill.put(make_batch(1))
    spill.put(make_batch(2))
    spill.retry()
    assert len(spill.spill) == 2 and spill.bytes == 2000, "still not writable: nothing moved, nothing lost"
    blocker.rmdir()
    spill.retry()
    assert not spill and spill.bytes == 0 and spill.error is None
    assert [b.id for b in store.next_batches(10)] == ["b0001", "b0002"]
    store.close()


def test_a_full_spill_drops_its_oldest_counted_but_keeps_the_newest(tmp_path: Path) -> None:
    store, _ = blocked_store(tmp_path)
    spill = SpillingStore(store, max_bytes=2500)
    with capture_logs() as logs:
        for i in range(4):
            spill.put(make_batch(i))  # 1000 B each: two fit in 2500 B
    assert [b.id for b in spill.spill] == ["b0002", "b0003"] and spill.bytes == 2000
    assert (spill.dropped_batches, spill.dropped_samples) == (2, 10 + 11)
    dropped = [e for e in logs if e["event"] == "spill_dropped"]
    assert [(e["batch_id"], e["samples"], e["bytes"], e["lost_samples_total"]) for e in dropped] == [
        ("b0000", 10, 1000, 10), ("b0001", 11, 1000, 21)]
    assert all(e["reason"] == "memory spill full (store.spill_max_bytes)" for e in dropped)

    exact = SpillingStore(blocked_store(tmp_path / "exact")[0], max_bytes=2000)
    exact.put(make_batch(1))
    exact.put(make_batch(2))
    assert len(exact.spill) == 2 and exact.dropped_batches == 0, "exactly the bound drops nothing"

    alone = SpillingStore(blocked_store(tmp_path / "alone")[0], max_bytes=500)
    alone.put(make_batch(1))
    assert len(alone.spill) == 1 and alone.dropped_batches == 0, "the newest batch stays even above the bound"
    alone.put(make_batch(2))
    assert [b.id for b in alone.spill] == ["b0002"] and alone.bytes == 1000 and alone.dropped_batches == 1


def test_a_stop_with_the_store_unwritable_counts_what_memory_held(tmp_path: Path) -> None:
    store, _ = blocked_store(tmp_path)
    spill = SpillingStore(store, max_bytes=10_000)
    for i in range(3):
        spill.put(make_batch(i))
    with capture_logs() as logs:
        spill.drop_all()
    assert not spill and spill.bytes == 0
    assert spill.status() == {"batches": 0, "bytes": 0, "max_bytes": 10_000, "dropped_batches": 3,
                              "dropped_samples": 10 + 11 + 12}
    assert [e["batch_id"] for e in logs if e["event"] == "spill_dropped"] == ["b0000", "b0001", "b0002"]
    assert {e["reason"] for e in logs if e["event"] == "spill_dropped"} == {"stopped while the store was not writable"}


def test_a_batch_larger_than_the_store_is_dropped_loudly_not_spilled(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", max_bytes=500)
    stored = []
    spill = SpillingStore(store, max_bytes=10_000, on_stored=lambda: stored.append(1))
    with capture_logs() as logs:
        spill.put(make_batch(1, size=800))
    assert not spill and spill.error is None and stored == [], "not a disk problem: nothing waits, nothing wakes"
    (too_large,) = [e for e in logs if e["event"] == "store_batch_too_large"]
    assert (too_large["batch_id"], too_large["bytes"]) == ("b0001", 800)
    assert "store.max_bytes (500 B)" in too_large["error"]
    assert too_large["fix"] == "raise store.max_bytes above batching.max_bytes"
    assert store.stats().counters["too_large_batches"] == 1
    store.close()


def test_evictions_are_logged_with_what_was_lost(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", max_bytes=2000)
    spill = SpillingStore(store, max_bytes=10_000)
    spill.put(make_batch(1, Priority.low))
    spill.put(make_batch(2, Priority.high))
    with capture_logs() as logs:
        spill.put(make_batch(3, Priority.normal))
    (evicted,) = [e for e in logs if e["event"] == "store_evicted"]
    assert (evicted["batch_id"], evicted["priority"], evicted["samples"], evicted["bytes"]) == ("b0001", "low", 11, 1000)
    assert evicted["reason"] == "store full (store.max_bytes / store.max_batches)"
    store.close()


def test_each_distinct_error_is_logged_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", max_bytes=10**6)
    spill = SpillingStore(store, max_bytes=10_000)
    with capture_logs() as logs:
        for error in ("disk I/O error", "disk I/O error", "database or disk is full", "disk I/O error"):
            spill.failed(OSError(error))
    assert [e["error"] for e in logs if e["event"] == "store_write_failed"] == [
        "disk I/O error", "database or disk is full", "disk I/O error"]
    assert spill.error == "disk I/O error"
    with capture_logs() as logs:
        spill.put(make_batch(1))
    assert spill.error is None and [e["event"] for e in logs] == ["store_recovered"]
    with capture_logs() as logs:
        spill.put(make_batch(2))
    assert [e["event"] for e in logs] == [], "recovered is said once"
    store.close()


def test_a_store_that_cannot_open_at_start_says_so_once_and_opens_later(tmp_path: Path) -> None:
    """The agent starts on a store it cannot open (it must keep collecting, never crash-loop): the
    error names the file, is logged once, every call tries again, and the first that can opens it."""
    path = tmp_path / "store.db"
    path.mkdir()
    with capture_logs() as logs:
        store = Store(path, max_bytes=10**6)
    assert store.db is None and (store.total_bytes, store.total_batches) == (0, 0)
    assert store.open_error == f"cannot write store {path}: unable to open database file"
    (said,) = [e for e in logs if e["event"] == "store_unavailable"]
    assert (said["path"], said["error"]) == (str(path), "unable to open database file")
    assert said["action"] == "keeping batches in memory; retrying"
    for _ in range(2):
        with pytest.raises(sqlite3.OperationalError):
            store.put(make_batch(1))
    path.rmdir()
    with capture_logs() as logs:
        assert store.next_batches(1) == []
    assert store.open_error is None and [(e["event"], e["path"], e["batches"]) for e in logs] == [
        ("store_opened", str(path), 0)]
    store.put(make_batch(1))
    store.close()
