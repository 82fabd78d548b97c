"""The SQLite store: committed batches survive a reopen, order by priority then age, bounded with counted evictions."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent.model import Batch, Priority
from agent.store import Store, StoreFullError


def make_batch(i: int, priority: Priority = Priority.normal, size: int = 1000, created: float = 1_750_000_000.0) -> Batch:
    return Batch(id=f"b{i:04d}", priority=priority, encoding="columnar", content_type="x", content_encoding="zstd",
                 payload=bytes([i % 256]) * size, sample_count=10 + i, first_t=created, last_t=created + 1,
                 created=created, vehicle="car", buses=("pt", "ch"))


def test_survives_reopen_and_acks_delete(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**6) as s:
        for i in range(3):
            s.put(make_batch(i))
    with Store(path, max_bytes=10**6) as s:
        got = s.next_batches(10)
        assert [b.id for b in got] == ["b0000", "b0001", "b0002"]
        assert got[1] == make_batch(1)
        assert s.ack("b0000") is True
        assert s.ack("b0000") is False
        st = s.stats()
        assert st.batches == 2 and st.counters["sent_batches"] == 1 and st.counters["sent_samples"] == 10
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_priority_then_age(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6) as s:
        s.put(make_batch(1, Priority.low))
        s.put(make_batch(2, Priority.normal))
        s.put(make_batch(3, Priority.high))
        s.put(make_batch(4, Priority.normal))
        s.put(make_batch(5, Priority.high))
        assert [b.id for b in s.next_batches(10)] == ["b0003", "b0005", "b0002", "b0004", "b0001"]
        assert [b.id for b in s.next_batches(2, exclude={"b0003"})] == ["b0005", "b0002"]


def test_eviction_lowest_priority_oldest_first_and_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=5000) as s:
        s.put(make_batch(1, Priority.high))
        s.put(make_batch(2, Priority.low))
        s.put(make_batch(3, Priority.normal))
        s.put(make_batch(4, Priority.low))
        s.put(make_batch(5, Priority.normal))
        ev = s.put(make_batch(6, Priority.normal))
        assert [e.id for e in ev] == ["b0002"]
        ev = s.put(make_batch(7, Priority.high))
        assert [e.id for e in ev] == ["b0004"]
        ev = s.put(make_batch(8, Priority.normal))
        assert [e.id for e in ev] == ["b0003"]
        st = s.stats()
        assert st.bytes <= 5000
        assert st.counters["evicted_low_batches"] == 2
        assert st.counters["evicted_low_samples"] == 12 + 14
        assert st.counters["evicted_normal_batches"] == 1
        assert "evicted_high_batches" not in st.counters
        assert {b.id for b in s.next_batches(10)} == {"b0001", "b0005", "b0006", "b0007", "b0008"}


def test_never_evicts_higher_priority_for_lower(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=3000) as s:
        for i in range(3):
            s.put(make_batch(i, Priority.high))
        ev = s.put(make_batch(9, Priority.low))  # the incoming low batch is the one evicted
        assert [e.id for e in ev] == ["b0009"]
        assert s.stats().batches == 3 and s.stats().counters["evicted_low_batches"] == 1
        assert "b0009" not in {b.id for b in s.next_batches(10)}
        with pytest.raises(StoreFullError):
            s.put(make_batch(10, Priority.low, size=4000))


def test_batch_count_limit(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6, max_batches=2) as s:
        for i in range(4):
            s.put(make_batch(i))
        assert [b.id for b in s.next_batches(10)] == ["b0002", "b0003"]


def test_ttl_per_priority(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6, ttl_s={Priority.low: 100, Priority.high: 1000}) as s:
        t = 1_750_000_000.0
        s.put(make_batch(1, Priority.low, created=t))
        s.put(make_batch(2, Priority.high, created=t))
        s.put(make_batch(3, Priority.low, created=t + 150))
        assert s.expire(now=t + 200) == 1
        assert [b.id for b in s.next_batches(10)] == ["b0002", "b0003"]
        assert s.stats().counters["expired_low_batches"] == 1
        assert s.stats().as_dict(now=t + 200)["oldest_pending_age_s"] == 200


def test_store_bench_reports_commit_and_drain_figures(tmp_path: Path) -> None:
    from agent.bench.store import BATCH_SIZES, SYNCHRONOUS, bench_store

    figures = bench_store(0.3, tmp_path)
    assert set(figures) == {f"{s}/{label}" for s in SYNCHRONOUS for label, _, _ in BATCH_SIZES}
    for f in figures.values():
        assert f["commit_batches_per_s"] > 0 and f["drain_batches_per_s"] > 0
        assert abs(f["commit_samples_per_s"] - f["commit_batches_per_s"] * f["batch_samples"]) <= 0.01 * f["commit_samples_per_s"]
    assert list(tmp_path.iterdir()) == [], "the bench cleans up its store files"


class SettableClock:
    """A wall clock that runs with the time since boot, as the real one does, and can be set."""

    def __init__(self, now: float) -> None:
        self.offset = now - time.clock_gettime(time.CLOCK_BOOTTIME)

    def __call__(self) -> float:
        return self.offset + time.clock_gettime(time.CLOCK_BOOTTIME)

    def set(self, now: float) -> None:  # what NTP or GNSS does
        self.offset = now - time.clock_gettime(time.CLOCK_BOOTTIME)


def test_a_clock_set_after_boot_does_not_expire_what_was_stored_before(tmp_path: Path) -> None:
    """A unit boots without a real-time clock (2000-01-01 here), stores batches, then NTP or GNSS sets
    the clock: the batches age from when they were really stored, not from 26 years ago; a batch made
    before the clock was set and stored after it (the memory spill) too. An earlier run's batches,
    stored with a right clock, keep their times."""
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**6, wallclock=SettableClock(1_795_650_000.0)) as s:
        s.put(make_batch(9, created=1_795_650_000.0))  # an earlier run, clock right
    clock = SettableClock(946_684_800.0)
    with Store(path, max_bytes=10**6, ttl_s={Priority.low: 3600, Priority.normal: 86400}, wallclock=clock) as s:
        s.put(make_batch(1, created=clock()))
        s.put(make_batch(2, Priority.low, created=clock() + 5))
        spilled = make_batch(3, created=clock())
        clock.set(1_795_700_000.0)  # a step of ~28 years
        assert s.expire() == 0, "nothing expires because the clock was set"
        s.put(spilled)
        st = s.stats().as_dict(now=clock())
        assert st["batches"] == 4 and st["counters"]["clock_steps"] == 1
        created = {b.id: b.created for b in s.next_batches(10)}
        assert created["b0009"] == 1_795_650_000.0, "a right time of an earlier run is not shifted"
        assert all(clock() - 60 < created[i] <= clock() + 10 for i in ("b0001", "b0002", "b0003"))
        assert s.expire(now=clock() + 3600 + 60) == 1, "an hour later the low batch's TTL is reached"


def test_batches_of_an_unset_clock_from_an_earlier_run_age_from_now(tmp_path: Path) -> None:
    """The clock was set while the agent was not running: batches an earlier run stored with the unset
    clock (before 2020) are dated when the store first looks, instead of expiring at once."""
    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**6, wallclock=SettableClock(946_684_800.0)) as s:  # 2000-01-01, no RTC
        s.put(make_batch(1, created=946_684_800.0))
    clock = SettableClock(1_795_700_000.0)
    with Store(path, max_bytes=10**6, ttl_s={Priority.normal: 86400}, wallclock=clock) as s:
        assert s.expire() == 0
        assert clock() - 60 < s.next_batches(1)[0].created <= clock()
        assert s.stats().counters["batches_dated_after_clock_set"] == 1


def test_a_batch_exactly_its_ttl_old_is_kept(tmp_path: Path) -> None:
    """Expired means older than the TTL: at exactly the TTL a batch is still sent."""
    with Store(tmp_path / "s.db", max_bytes=10**6, ttl_s={Priority.normal: 100}) as s:
        t = 1_750_000_000.0
        s.put(make_batch(1, created=t))
        s.put(make_batch(2, created=t + 0.5))
        assert s.expire(now=t + 100) == 0
        assert s.expire(now=t + 100.25) == 1
        assert [b.id for b in s.next_batches(10)] == ["b0002"]
        assert s.stats().counters["expired_normal_samples"] == 11


def test_a_batch_that_exactly_fits_evicts_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=3000) as s:
        assert s.put(make_batch(1)) == [] and s.put(make_batch(2)) == []
        assert s.put(make_batch(3)) == [], "3 x 1000 B is exactly the limit"
        assert [e.id for e in s.put(make_batch(4))] == ["b0001"], "one byte over: the oldest goes, only it"
        assert s.stats().bytes == 3000 and s.stats().counters["evicted_normal_batches"] == 1


def test_room_made_by_exactly_the_evictable_batches(tmp_path: Path) -> None:
    """Evicting every lower-or-equal batch makes exactly enough room: the incoming batch is stored."""
    with Store(tmp_path / "s.db", max_bytes=3000) as s:
        s.put(make_batch(1, Priority.high))
        s.put(make_batch(2, Priority.high))
        s.put(make_batch(3, Priority.low))
        assert [e.id for e in s.put(make_batch(4, Priority.low))] == ["b0003"]
        assert {b.id for b in s.next_batches(10)} == {"b0001", "b0002", "b0004"}
    with Store(tmp_path / "n.db", max_bytes=10**6, max_batches=2) as s:
        s.put(make_batch(1, Priority.high))
        s.put(make_batch(2, Priority.low))
        assert [e.id for e in s.put(make_batch(3, Priority.low))] == ["b0002"]
        assert {b.id for b in s.next_batches(10)} == {"b0001", "b0003"}


def test_a_campaign_event_and_the_simulated_mark_survive_a_reopen(tmp_path: Path) -> None:
    """A campaign event's batch carries its description to the cloud; a simulated batch must never read
    as a vehicle's data: both as they were put, after a restart."""
    from dataclasses import replace

    path = tmp_path / "s.db"
    event = {"campaign": "hard-brake", "event_id": "e-1", "trigger_t": 1_750_000_000.5}
    with Store(path, max_bytes=10**6) as s:
        s.put(replace(make_batch(1), event=event))
        s.put(replace(make_batch(2), simulated=True))
        s.put(make_batch(3))
    with Store(path, max_bytes=10**6) as s:
        got = {b.id: b for b in s.next_batches(10)}
    assert got["b0001"].event == event and got["b0001"].simulated is False
    assert got["b0002"].simulated is True and got["b0002"].event is None
    assert got["b0003"].event is None and got["b0003"].simulated is False


@pytest.mark.parametrize(("text", "logged"), [("{not json", True), ("{" + "x" * 99, True), ("[1, 2]", False), ("", False)])
def test_an_unreadable_event_description_reads_as_none_and_the_batch_is_still_sent(
        tmp_path: Path, text: str, logged: bool) -> None:
    from structlog.testing import capture_logs

    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**6) as s:
        s.put(make_batch(1))
    db = sqlite3.connect(path)
    db.execute("UPDATE batches SET event = ?", (text,))
    db.commit()
    db.close()
    with Store(path, max_bytes=10**6) as s, capture_logs() as logs:
        (got,) = s.next_batches(5)
    assert got.id == "b0001" and got.event is None and got.payload == make_batch(1).payload
    said = [e for e in logs if e["event"] == "store_event_unreadable"]
    assert said == ([{"event": "store_event_unreadable", "log_level": "warning", "text": text[:80]}] if logged else [])


def test_a_clock_corrected_while_running_shifts_this_runs_batches(tmp_path: Path) -> None:
    """NTP corrects a right-looking clock by an hour: what this run stored keeps its real age (no early
    expiry), counted and logged; nothing is dated as if the clock had been unset."""
    from structlog.testing import capture_logs

    clock = SettableClock(1_795_700_000.0)
    with Store(tmp_path / "s.db", max_bytes=10**6, ttl_s={Priority.normal: 1800}, wallclock=clock) as s:
        s.put(make_batch(1, created=clock()))
        clock.set(clock() + 3600)
        with capture_logs() as logs:
            assert s.expire() == 0, "an hour's step is not an hour of age"
        (stepped,) = [e for e in logs if e["event"] == "clock_stepped"]
        assert stepped["batches_shifted"] == 1 and stepped["path"] == str(tmp_path / "s.db")
        assert abs(stepped["step_s"] - 3600) < 1 and stepped["step_s"] == round(stepped["step_s"], 3)
        assert not [e for e in logs if e["event"] == "batches_of_unset_clock"]
        assert clock() - 60 < s.next_batches(1)[0].created <= clock()
        counters = s.stats().counters
        assert counters["clock_steps"] == 1 and "batches_dated_after_clock_set" not in counters
        with capture_logs() as logs:
            s.put(make_batch(2, created=clock()))
        assert logs == [] and s.stats().counters["clock_steps"] == 1, "no step: nothing to follow"


def test_two_boots_before_the_clock_is_set_keep_every_batch(tmp_path: Path) -> None:
    """A unit without a real-time clock boots twice before NTP answers: the first boot's batches (an
    earlier run's, times of an unset clock) are dated when the clock is set, the second boot's shifted
    by the step; none expires, each counted once."""
    from structlog.testing import capture_logs

    path = tmp_path / "s.db"
    with Store(path, max_bytes=10**6, wallclock=SettableClock(946_684_800.0)) as s:
        s.put(make_batch(1, created=946_684_800.0))
    clock = SettableClock(946_690_000.0)
    with Store(path, max_bytes=10**6, ttl_s={Priority.normal: 86400}, wallclock=clock) as s:
        s.put(make_batch(2, created=clock()))
        s.put(make_batch(3, created=clock()))
        assert s.stats().counters.get("batches_dated_after_clock_set", 0) == 0, "nothing is dated while unset"
        clock.set(1_795_700_000.0)
        with capture_logs() as logs:
            assert s.expire() == 0
        (dated,) = [e for e in logs if e["event"] == "batches_of_unset_clock"]
        assert dated["batches"] == 1 and dated["path"] == str(path) and dated["action"] == "their age counts from now"
        assert all(clock() - 60 < b.created <= clock() for b in s.next_batches(10))
        assert s.stats().counters["batches_dated_after_clock_set"] == 1
        s.put(make_batch(4, created=clock()))
        assert s.stats().counters["batches_dated_after_clock_set"] == 1


@pytest.mark.parametrize(("asked", "pragma"), [(None, 1), ("NORMAL", 1), ("FULL", 2), ("OFF", 1)])
def test_the_sync_level_is_full_or_normal(tmp_path: Path, asked: str | None, pragma: int) -> None:
    """store.synchronous FULL syncs every commit; anything else is NORMAL (never OFF: a power cut
    must not lose what was acknowledged to the batcher)."""
    kwargs = {} if asked is None else {"synchronous": asked}
    with Store(tmp_path / "s.db", max_bytes=10**6, **kwargs) as s:
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == pragma
        assert s.open_error is None


def test_the_batch_count_limit_never_evicts_higher_priority(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6, max_batches=2) as s:
        s.put(make_batch(1, Priority.high))
        s.put(make_batch(2, Priority.high))
        assert [e.id for e in s.put(make_batch(3, Priority.low))] == ["b0003"], "the incoming low batch is evicted"
        assert [b.id for b in s.next_batches(10)] == ["b0001", "b0002"]
        assert s.stats().counters["evicted_low_batches"] == 1


def test_a_store_in_folders_that_do_not_exist_yet(tmp_path: Path) -> None:
    """The state folder is made (with its parents) at start, and again when it vanished or could not be
    made: a file where the folder goes stops the store until it is gone, then the same store opens."""
    with Store(tmp_path / "a" / "b" / "s.db", max_bytes=10**6) as s:
        assert s.db is not None and s.open_error is None
    (tmp_path / "state").write_text("not a folder")
    s = Store(tmp_path / "state" / "sub" / "s.db", max_bytes=10**6)
    assert s.db is None and s.open_error is not None
    with pytest.raises(sqlite3.OperationalError, match="cannot open store"):
        s.put(make_batch(1))
    (tmp_path / "state").unlink()
    s.put(make_batch(1))
    assert s.open_error is None and [b.id for b in s.next_batches(5)] == ["b0001"]
    s.close()
