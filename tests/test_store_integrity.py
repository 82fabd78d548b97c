"""Integrity of stored batches: a checksum per batch, checked on the way out; damaged bytes are quarantined.

Real SQLite files damaged the way flash or a stray write damages them (bytes inside a stored payload,
SQLite's own quick_check still "ok"), stores written before checksums existed, a store limit below one
batch, and random damage (hypothesis) drained through the real forwarder into the real file sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.codec import ColumnarCodec
from agent.model import Batch, Priority
from agent.store import Store, StoreFullError
from agent.store.sqlite import EXPECTED_COLUMNS
from agent.uplink.file import FileSink
from agent.uplink.forwarder import Forwarder
from tests.test_store import make_batch

T0 = 1_795_000_000.0


def real_batch(i: int, samples: int = 40, priority: Priority = Priority.normal) -> Batch:
    """A columnar batch as the batcher makes it (distinct values per batch, so payloads differ)."""
    columns = {("pt", "Engine", "Speed"): ([T0 + i + k / 100 for k in range(samples)],
                                          [float(i * 1000 + k) for k in range(samples)])}
    codec = ColumnarCodec()
    payload = codec.encode(columns, vehicle="car")
    return Batch(id=f"r{i:04d}", priority=priority, encoding="columnar", content_type=codec.content_type,
                 content_encoding=codec.content_encoding, payload=payload, sample_count=samples,
                 first_t=T0 + i, last_t=T0 + i + 1, created=T0 + i, vehicle="car", buses=("pt",))


def damage_payload(path: Path, payload: bytes, at: float = 0.5, length: int = 16) -> None:
    """Write `length` zero bytes inside the stored copy of `payload`, behind SQLite's back."""
    data = path.read_bytes()
    offset = data.find(payload)
    assert offset > 0 and data.find(payload, offset + 1) == -1, "the payload is stored once, contiguously"
    start = offset + int((len(payload) - length) * at)
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\0" * length)


def test_zeroed_bytes_in_a_payload_are_quarantined_and_the_queue_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    batches = [real_batch(i) for i in range(4)]
    with Store(path, max_bytes=10**6) as s:
        for b in batches:
            s.put(b)
    damage_payload(path, batches[1].payload)
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"  # SQLite sees nothing
    with Store(path, max_bytes=10**6) as s:
        sent = []
        while got := s.next_batches(1):
            assert got[0].payload == next(b.payload for b in batches if b.id == got[0].id)
            sent.append(got[0].id)
            s.ack(got[0].id)
        st = s.stats()
    assert sent == ["r0000", "r0002", "r0003"]
    c = st.counters
    assert (c["quarantined_batches"], c["quarantined_samples"], c["quarantined_bytes"]) == (
        1, 40, batches[1].size)
    assert [(q.id, q.priority, q.samples) for q in st.quarantine] == [("r0001", Priority.normal, 40)]
    assert "checksum" in st.quarantine[0].reason
    assert st.as_dict()["quarantine"][0]["id"] == "r0001"
    # The damaged bytes are kept for inspection, out of the queue.
    kept = sqlite3.connect(path).execute("SELECT payload FROM quarantine WHERE id = 'r0001'").fetchone()[0]
    assert len(kept) == batches[1].size and kept != batches[1].payload


@pytest.mark.parametrize("damage", [
    "payload = CAST(x'28b52ffdff' AS TEXT)", "priority = 'x'", "priority = 99", "buses = x'ff00'",
    "sample_count = 'many'", "size = 'big'", "id = '../../evil'", "encoding = '/../../evil'", "event = x'ff'"])
def test_a_damaged_row_is_quarantined_and_the_file_sink_gets_the_rest(tmp_path: Path, damage: str) -> None:
    """SQLite keeps any type in any column: a row damaged beyond its payload (text for bytes, a priority
    the agent never writes, a batch id or encoding that would name a file elsewhere) used to crash the
    forwarder (status too) or block the queue for good; it is quarantined and the rest is delivered."""
    path = tmp_path / "store.db"
    batches = [real_batch(i) for i in range(3)]
    with Store(path, max_bytes=10**6) as s:
        for b in batches:
            s.put(b)
    db = sqlite3.connect(path)
    db.execute(f"UPDATE batches SET {damage} WHERE id = 'r0001'")
    db.commit()
    db.close()
    outbox = tmp_path / "outbox"
    with Store(path, max_bytes=10**6) as s:
        async def drain() -> None:
            forwarder = Forwarder(s, FileSink(outbox, decoded=False))
            await forwarder.drain(30)
            await forwarder.close()

        asyncio.run(drain())
        st = s.stats()
        assert s.next_batches(5) == []
    assert sorted(p.name for p in outbox.glob("*.columnar")) == ["r0000.columnar", "r0002.columnar"]
    assert st.counters["quarantined_batches"] == 1 and len(st.quarantine) == 1
    assert not list(tmp_path.glob("**/evil*"))


def test_quarantine_is_bounded_oldest_discarded_and_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=10**6, quarantine_max_bytes=2500) as s:
        for i in range(4):
            s.put(make_batch(i))  # 1000 bytes each
        for i in range(4):
            assert s.quarantine(f"b{i:04d}", "a sink could not prepare it") is not None
        assert s.quarantine("b0000", "again") is None  # already out of the queue
        st = s.stats()
        assert st.batches == 0
        assert [q.id for q in st.quarantine] == ["b0003", "b0002"]  # newest first; 2 x 1000 B fit
        assert st.counters["quarantined_batches"] == 4 and st.counters["quarantine_discarded_batches"] == 2
        assert s.db.execute("SELECT SUM(size) FROM quarantine").fetchone()[0] <= 2500


def test_a_batch_larger_than_the_store_is_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_bytes=500) as s:
        try:
            s.put(make_batch(1, size=800))
        except StoreFullError as exc:
            assert "store.max_bytes (500 B)" in str(exc)
        else:
            raise AssertionError("a batch above store.max_bytes must be refused")
        c = s.stats().counters
        assert (c["too_large_batches"], c["too_large_samples"], c["too_large_bytes"]) == (1, 11, 800)
        assert s.stats().batches == 0


def _legacy_store(path: Path, batches: list[Batch], *, simulated_column: bool) -> None:
    """A store file as the agent wrote it before checksums: the first layout, or the one with the
    simulated marker (same table, no sha256 column)."""
    db = sqlite3.connect(path)
    extra = ", simulated INTEGER NOT NULL DEFAULT 0" if simulated_column else ""
    db.executescript(f"""
        CREATE TABLE batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            priority INTEGER NOT NULL, created REAL NOT NULL, encoding TEXT NOT NULL, content_type TEXT NOT NULL,
            content_encoding TEXT NOT NULL, sample_count INTEGER NOT NULL, first_t REAL NOT NULL,
            last_t REAL NOT NULL, vehicle TEXT NOT NULL, buses TEXT NOT NULL, size INTEGER NOT NULL,
            payload BLOB NOT NULL{extra});
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('stored_batches', 3);
    """)
    cols = ", ".join(EXPECTED_COLUMNS[1:14])
    for b in batches:
        db.execute(f"INSERT INTO batches ({cols}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (b.id, int(b.priority), b.created, b.encoding, b.content_type, b.content_encoding,
                    b.sample_count, b.first_t, b.last_t, b.vehicle, ",".join(b.buses), b.size, b.payload))
    db.commit()
    db.close()


@pytest.mark.parametrize("simulated_column", [False, True], ids=["first-layout", "with-simulated"])
def test_a_store_written_before_checksums_keeps_working(tmp_path: Path, simulated_column: bool) -> None:
    path = tmp_path / "store.db"
    good = [real_batch(0), real_batch(2)]
    broken = real_batch(1)
    broken = Batch(**{**{f: getattr(broken, f) for f in broken.__dataclass_fields__},
                      "payload": broken.payload[:10] + b"\0" * 16 + broken.payload[26:]})
    _legacy_store(path, [good[0], broken, good[1]], simulated_column=simulated_column)
    from structlog.testing import capture_logs

    with capture_logs() as logs, Store(path, max_bytes=10**6) as s:
        assert s.quarantined == [], "an old store is migrated, not moved aside"
        assert [(e["path"], e["batches"], e["quarantined"]) for e in logs if e["event"] == "store_checksums_added"] == [
            (str(path), 2, 1)]
        got = s.next_batches(10)
        assert [b.payload for b in got] == [b.payload for b in good]
        st = s.stats()
        assert st.counters["stored_batches"] == 3 and st.counters["quarantined_batches"] == 1
        assert [q.id for q in st.quarantine] == ["r0001"] and "before checksums" in st.quarantine[0].reason
        s.put(real_batch(3))
    with Store(path, max_bytes=10**6) as s:  # the migration happened once; the new row has its checksum
        assert [b.id for b in s.next_batches(10)] == ["r0000", "r0002", "r0003"]
        assert s.db.execute("SELECT COUNT(*) FROM batches WHERE sha256 IS NULL").fetchone()[0] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hits=st.lists(st.tuples(st.integers(0, 6), st.floats(0, 1), st.integers(1, 64),
                               st.sampled_from([b"\0", b"\xff", b"rand"])), min_size=1, max_size=6))
@example(hits=[(6, 0.109375, 1, b"\xff")])  # a byte of the schema's text: not UTF-8 at open
def test_random_damage_never_crashes_and_never_sends_damaged_bytes(tmp_path_factory, hits) -> None:
    """Random bytes overwritten inside stored payloads (target 0-5) or anywhere in the file (6: pages,
    headers): the store opens (or is moved aside), the forwarder drains into the real file sink, and
    every file it wrote is a batch's original bytes."""
    tmp = tmp_path_factory.mktemp("damage")
    path = tmp / "store.db"
    batches = {b.id: b for b in (real_batch(i, samples=30 + i) for i in range(6))}
    with Store(path, max_bytes=10**6) as s:
        for b in batches.values():
            s.put(b)
    data = path.read_bytes()
    regions = [(data.find(b.payload), b.size) for b in batches.values()] + [(0, len(data))]
    with open(path, "r+b") as fh:
        for target, at, length, fill in hits:
            start, size = regions[target]
            length = min(length, size)
            fh.seek(start + int(at * (size - length)))
            fh.write(os.urandom(length) if fill == b"rand" else fill * length)

    async def drain() -> None:
        with Store(path, max_bytes=10**6) as store:
            fwd = Forwarder(store, FileSink(tmp / "outbox", decoded=False))
            for _ in range(20):
                try:
                    if not await fwd.send_one():
                        break
                except sqlite3.DatabaseError:
                    continue  # corruption SQLite itself found: the file was moved aside, a fresh one started
            await fwd.close()

    asyncio.run(drain())
    for f in (tmp / "outbox").glob("*.columnar"):
        assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256(batches[f.stem].payload).digest()


def test_a_schema_damaged_into_invalid_utf8_is_moved_aside_with_its_reason(tmp_path: Path) -> None:
    """The schema's text in sqlite_master is read as UTF-8 at open: a damaged byte there is a damaged
    file (moved aside, counted, the reason logged), not a crash at start."""
    from structlog.testing import capture_logs

    path = tmp_path / "store.db"
    with Store(path, max_bytes=10**6) as s:
        s.put(make_batch(0))
    data = bytearray(path.read_bytes())
    at = data.find(b"CREATE TABLE batches (")
    assert at > 0
    data[at + 21] = 0xFF  # its "(": SQLite still reads the schema, Python cannot decode it
    path.write_bytes(bytes(data))
    with capture_logs() as logs, Store(path, max_bytes=10**6) as s:
        assert s.stats().counters["corrupt_files_moved"] == 1
        assert s.total_batches == 0
    (moved,) = [e for e in logs if e["event"] == "store_corrupt_moved_aside"]
    assert "utf-8" in moved["reason"] and moved["moved_to"].startswith(f"{path}.corrupt-")
    assert Path(moved["moved_to"]).read_bytes() == bytes(data)
