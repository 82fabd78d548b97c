"""Batches in SQLite (WAL): committed before they count as stored, deleted only when acknowledged.

One pre-encoded blob per batch keeps buffering almost free (~0.03 us a sample). The store is
bounded by bytes (and optionally by batch count); when full it evicts the lowest priority, oldest
batches first and counts every eviction. Counters live in the same file and change in the same
transaction as the rows they count.

Every batch carries the SHA-256 of its payload, written in the transaction that commits it and
checked whenever it is read back for sending: flash, a file system or a stray write can damage a
blob in a way SQLite's own checks do not see, and such bytes must never reach a cloud. A batch that
fails the check (or that a sink cannot prepare) moves to a bounded quarantine table in the same file,
counted, and the queue goes on with the next batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import structlog

from agent.model import Batch, Priority
from agent.store.wal import SQLITE_FULL, WAL_MAX_BYTES, WalBudget

log = structlog.get_logger()

# SQLite result codes that mean "this file is not a usable database" (not "the disk is unhappy").
CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
SQLITE_READONLY = 8
EXPECTED_COLUMNS = ("seq", "id", "priority", "created", "encoding", "content_type", "content_encoding",
                    "sample_count", "first_t", "last_t", "vehicle", "buses", "size", "payload", "simulated", "sha256",
                    "event")
# Columns added since the first store layout, in the order they came: an older file is upgraded in place,
# not moved aside (its batches predate the simulated marker and read as 0; their checksums are added by
# _checksum_legacy_rows; they are no campaign events).
ADDED_COLUMNS = {"simulated": "INTEGER NOT NULL DEFAULT 0", "sha256": "TEXT", "event": "TEXT NOT NULL DEFAULT ''"}
QUARANTINE_MAX_BYTES = 8 * 1024 * 1024
QUARANTINE_LISTED = 20  # newest quarantined batches in status (the counters count them all)

# A batch's columns after its id: the queue and the quarantine hold the same rows.
_BATCH_FIELDS = """
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    encoding TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    sample_count INTEGER NOT NULL,
    first_t REAL NOT NULL,
    last_t REAL NOT NULL,
    vehicle TEXT NOT NULL,
    buses TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL,
    simulated INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,{_BATCH_FIELDS},
    event TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS batches_drain ON batches (priority DESC, seq);
CREATE INDEX IF NOT EXISTS batches_evict ON batches (priority, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    quarantined REAL NOT NULL,
    reason TEXT NOT NULL,{_BATCH_FIELDS}
);
"""

_COLUMNS = ("id, priority, created, encoding, content_type, content_encoding, sample_count, first_t, last_t, "
            "vehicle, buses, size, payload, simulated")
_COPY_COLUMNS = f"{_COLUMNS}, sha256"
_SEND_COLUMNS = _COLUMNS.replace("payload", "CAST(payload AS BLOB)")  # damaged text there must not fail the read


def checksum(payload: bytes) -> str:
    """The integrity check of a stored payload (hex SHA-256; the file sink's delivery log uses the same)."""
    return hashlib.sha256(payload).hexdigest()


class Evicted(NamedTuple):
    """A batch dropped to make room: counted, logged, never sent."""

    id: str
    priority: Priority
    samples: int
    bytes: int


class Quarantined(NamedTuple):
    """A batch taken out of the queue because its bytes failed the checksum or a sink could not prepare
    it: counted, kept (bounded) for inspection, never sent."""

    id: str
    priority: Priority
    samples: int
    bytes: int
    quarantined: float
    reason: str


class StoreFullError(Exception):
    """A batch larger than the whole store limit (a configuration error: store.max_bytes < batching.max_bytes).
    The store counts it (`too_large_*`) before raising."""


class StoreCorruptError(sqlite3.DatabaseError):
    """The file was not a usable store: it was moved aside and a fresh one started (the operation failed)."""


def is_corrupt(exc: BaseException) -> bool:
    return isinstance(exc, StoreCorruptError) or (
        isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in CORRUPT_CODES)


def move_aside(path: Path, reason: str, now: float | None = None) -> Path:
    """Move a corrupt database (and its -wal/-shm) aside under a timestamped name; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{target}{suffix}")
    log.error("store_corrupt_moved_aside", path=str(path), moved_to=str(target), reason=reason,
              action="started a fresh store; the old file is kept for inspection")
    return target


@dataclass(slots=True)
class StoreStats:
    """Depth and counters, as `vehicle-agent status` and the twin show them."""

    depth: dict[str, dict[str, int]] = field(default_factory=dict)   # priority -> batches/samples/bytes
    oldest_created: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    quarantine: list[Quarantined] = field(default_factory=list)      # newest first, at most QUARANTINE_LISTED

    @property
    def batches(self) -> int:
        return sum(d["batches"] for d in self.depth.values())

    @property
    def bytes(self) -> int:
        return sum(d["bytes"] for d in self.depth.values())

    @property
    def samples(self) -> int:
        return sum(d["samples"] for d in self.depth.values())

    def as_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        return {"batches": self.batches, "samples": self.samples, "bytes": self.bytes,
                "by_priority": self.depth,
                "oldest_pending_age_s": None if self.oldest_created is None else round(now - self.oldest_created, 3),
                "counters": self.counters,
                "quarantine": [{"id": q.id, "priority": q.priority.name, "samples": q.samples, "bytes": q.bytes,
                                "quarantined": q.quarantined, "reason": q.reason} for q in self.quarantine]}


def _event(text: str) -> dict[str, Any] | None:
    """A stored campaign event description (JSON); a row of an earlier layout has none."""
    if not text:
        return None
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        log.warning("store_event_unreadable", text=text[:80])
        return None
    return event if isinstance(event, dict) else None


def _priority(value: object) -> Priority:
    """A stored priority; a value no batch is written with (a damaged row) reads as low."""
    return Priority(value) if type(value) is int and value in Priority._value2member_map_ else Priority.low


def _row_problem(row: tuple) -> str | None:
    """Why a stored row (`_COLUMNS`, sha256, event) cannot be sent as it is, or None. SQLite keeps any type in any
    column, so a damaged file can hold text where the agent wrote bytes, or a priority it never writes."""
    (bid, prio, created, enc, ctype, cenc, count, first, last, vehicle, buses, size, payload, _sim, sha) = row[:15]
    if checksum(payload) != sha:  # payload is read as bytes (_SEND_COLUMNS)
        return "payload does not match its checksum (damaged on disk)"
    if _priority(prio) != prio or type(prio) is not int:
        return "priority is not one the agent writes (damaged on disk)"
    texts_ok = all(type(v) is str for v in (bid, enc, ctype, cenc, vehicle, buses, *row[15:16]))  # event
    numbers_ok = all(type(v) is int for v in (count, size)) and all(type(v) in (int, float) for v in (created, first, last))
    return None if texts_ok and numbers_ok else "a column holds a value of the wrong type (damaged on disk)"


def _row_to_batch(row: tuple) -> Batch:
    (bid, prio, created, enc, ctype, cenc, count, first, last, vehicle, buses, _size, payload, simulated) = row[:14]
    event = row[15] if len(row) > 15 else ""
    return Batch(id=bid, priority=Priority(prio), encoding=enc, content_type=ctype, content_encoding=cenc,
                 payload=bytes(payload), sample_count=count, first_t=first, last_t=last, created=created,
                 vehicle=vehicle, buses=tuple(b for b in buses.split(",") if b), simulated=bool(simulated),
                 event=_event(event))


def _guarded(method):
    """Turn SQLITE_CORRUPT/NOTADB during operation into: file moved aside, fresh store, StoreCorruptError."""

    @functools.wraps(method)
    def wrapper(self: Store, *args, **kwargs):
        try:
            self._ensure_open()
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot open store {self.path}: {exc}") from exc
        try:
            result = method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
            if code == SQLITE_FULL and self.db is not None:
                # The WAL may hold most of the disk: copying it into the database file and truncating
                # it is what gives the space back once something else freed some.
                self.wal.checkpoint(self.db, f"a write failed: {exc}")
            if code == SQLITE_READONLY:
                # A connection opened while the file system was read-only stays read-only: reopen once
                # (read-write if the file system is writable again), else keep it closed and raise.
                self._not_open(exc)
                try:
                    self._ensure_open()
                except (sqlite3.Error, OSError):
                    raise exc from None
                return method(self, *args, **kwargs)
            if isinstance(exc, StoreCorruptError) or not self.recover_if_corrupt(exc):
                raise
            raise StoreCorruptError(f"store {self.path} was corrupt ({exc}); moved aside, fresh store started") from exc
        if self.db is not None:
            self.wal.after_write(self.db)
        return result
    return wrapper


class _SchemaMismatch(sqlite3.DatabaseError):
    """A valid SQLite file that is not our store (wrong columns) or fails its integrity check."""


CLOCK_STEP_S = 2.0  # a change of (wall clock - time since boot) beyond this is the wall clock being set
CLOCK_SET_AFTER = 1_600_000_000.0  # 2020-09-13: a creation time before this is a clock that was not set yet


def _since_boot() -> float:
    """Seconds since boot, suspend included (CLOCK_BOOTTIME): a unit that sleeps in suspend-to-RAM
    must not look as if its clock was set. The monotonic clock elsewhere."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class Store:
    """A bounded, prioritised queue of batches in one SQLite file.

    Batches age by their creation time on the wall clock (time-to-live, oldest pending). Telematics
    units often boot without a real-time clock and set it later from NTP or GNSS; batches stored
    before that carry times of the unset clock and would all expire at once. So the store follows
    the clock: a step of the wall clock against the time since boot shifts the stored creation times
    by the step, and creation times from before 2020 (a clock not set when they were stored, by an
    earlier run) count from the moment the clock is right. Samples keep their kernel timestamps.
    """

    def __init__(self, path: str | Path, *, max_bytes: int, max_batches: int | None = None,
                 synchronous: str = "NORMAL", ttl_s: Mapping[Priority, float] | None = None,
                 quarantine_max_bytes: int = QUARANTINE_MAX_BYTES, wal_max_bytes: int = WAL_MAX_BYTES,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.quarantine_max_bytes = quarantine_max_bytes
        self.wal = WalBudget(self.path, wal_max_bytes)  # the WAL within its budget (agent/store/wal.py)
        self.wallclock = wallclock  # injectable: tests step it as NTP would
        self._clock_offset = wallclock() - _since_boot()
        self._unset_dated = False
        self._first_seq = 0  # rows after this seq were stored by this connection (its clock steps shift them)
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self.ttl_s = dict(ttl_s or {})
        self.synchronous = "FULL" if synchronous == "FULL" else "NORMAL"
        self.quarantined: list[Path] = []
        self.db: sqlite3.Connection | None = None
        self.open_error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except (sqlite3.OperationalError, OSError) as exc:
            # Read-only or full file system at start: the agent keeps collecting into its memory spill and
            # every store call retries the open, so it recovers without a restart (and never crash-loops).
            self._not_open(exc)

    def _not_open(self, exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            if self.db is not None:
                self.db.close()
        self.db = None
        self.total_bytes = self.total_batches = 0
        error = f"cannot write store {self.path}: {exc}"
        if error != self.open_error:
            log.error("store_unavailable", path=str(self.path), error=str(exc),
                      action="keeping batches in memory; retrying")
        self.open_error = error

    @property
    def _open_db(self) -> sqlite3.Connection:
        """The connection of an open store: every operation runs after _ensure_open (through _guarded)."""
        if self.db is None:
            raise sqlite3.ProgrammingError(f"store {self.path} is not open")
        return self.db

    def _ensure_open(self) -> None:
        if self.db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
            self.open_error = None
            log.info("store_opened", path=str(self.path), batches=self.total_batches)

    def _open(self) -> None:
        """Open (or create) the file; a file that is not a usable store is moved aside once, then retried."""
        try:
            self._connect()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # a damaged schema's text is not UTF-8
            if isinstance(exc, sqlite3.DatabaseError) and not (is_corrupt(exc) or isinstance(exc, _SchemaMismatch)):
                raise
            with contextlib.suppress(Exception):
                self._open_db.close()
            self.quarantined.append(move_aside(self.path, str(exc)))
            self._connect()
            self._count_now(corrupt_files_moved=1)

    def _connect(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=5000")
        columns = tuple(r[1] for r in self.db.execute("PRAGMA table_info(batches)"))  # before changing the file
        first_layout = len(EXPECTED_COLUMNS) - len(ADDED_COLUMNS)
        if columns and len(columns) >= first_layout and EXPECTED_COLUMNS[:len(columns)] == columns:
            for name in EXPECTED_COLUMNS[len(columns):]:
                self.db.execute(f"ALTER TABLE batches ADD COLUMN {name} {ADDED_COLUMNS[name]}")
            columns = EXPECTED_COLUMNS
        if columns and columns != EXPECTED_COLUMNS:
            raise _SchemaMismatch(f"table batches has columns {columns}, expected {EXPECTED_COLUMNS}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={self.synchronous}")
        self.wal.configure(self.db)
        check = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise _SchemaMismatch(f"integrity check failed: {check}")
        self.db.executescript(SCHEMA)
        self._checksum_legacy_rows()
        self.total_bytes, self.total_batches = self.db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM batches").fetchone()
        self._unset_dated = False  # batches of an unset clock (an earlier run's) are dated once the clock is set
        self._first_seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM batches").fetchone()[0]

    def recover_if_corrupt(self, exc: BaseException) -> bool:
        """After SQLITE_CORRUPT/NOTADB during operation: move the file aside, start fresh; True if it did."""
        if not is_corrupt(exc):
            return False
        with contextlib.suppress(Exception):
            self._open_db.close()
        self.quarantined.append(move_aside(self.path, str(exc)))
        self._open()
        self._count_now(corrupt_files_moved=1)
        return True

    def _count_now(self, **deltas: int) -> None:
        self._open_db.execute("BEGIN IMMEDIATE")
        self._count(**deltas)
        self._open_db.execute("COMMIT")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rollback(self) -> None:
        """Roll back if a transaction is open; never masks the error that caused it."""
        with contextlib.suppress(sqlite3.Error):
            if self._open_db.in_transaction:
                self._open_db.execute("ROLLBACK")

    def _count(self, **deltas: int) -> None:
        self._open_db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in deltas.items() if v])

    def _follow_clock(self) -> bool:
        """Shift this run's stored creation times by a step of the wall clock, and date batches of an
        unset clock once the clock is set; True if the clock stepped.

        Only rows stored since this connection opened are shifted: earlier runs' rows carry times of
        their own clock (right, or before 2020 when it was unset, which the second rule handles).
        The new offset counts as seen only once the shift is committed, so a failed write retries it.
        """
        now = self.wallclock()
        offset = now - _since_boot()
        step = offset - self._clock_offset
        stepped = abs(step) >= CLOCK_STEP_S
        date_unset = now >= CLOCK_SET_AFTER and not self._unset_dated
        if not stepped and not date_unset:
            return False
        self._open_db.execute("BEGIN IMMEDIATE")
        try:
            shifted = self._open_db.execute("UPDATE batches SET created = created + ? WHERE seq > ?",
                                      (step, self._first_seq)).rowcount if stepped else 0
            unset = self._open_db.execute("UPDATE batches SET created = ? WHERE created < ?",
                                    (now, CLOCK_SET_AFTER)).rowcount if date_unset else 0
            self._count(clock_steps=int(stepped), batches_dated_after_clock_set=unset)
            self._open_db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if stepped:
            self._clock_offset = offset
            log.warning("clock_stepped", step_s=round(step, 3), batches_shifted=shifted, path=str(self.path))
        self._unset_dated = self._unset_dated or date_unset
        if unset:
            log.warning("batches_of_unset_clock", batches=unset, path=str(self.path),
                        action="their age counts from now")
        return stepped

    @_guarded
    def put(self, batch: Batch) -> list[Evicted]:
        """Commit a batch (durable when this returns); returns the batches evicted to make room.

        If only higher-priority batches could make room, the incoming batch itself is evicted (counted, and
        returned in the list) instead.
        """
        if batch.size > self.max_bytes:
            self._count_now(too_large_batches=1, too_large_samples=batch.sample_count, too_large_bytes=batch.size)
            raise StoreFullError(f"batch {batch.id} ({batch.size} B) is larger than the store limit "
                                 f"store.max_bytes ({self.max_bytes} B)")
        self._follow_clock()
        created = batch.created
        if created < CLOCK_SET_AFTER and self._unset_dated:  # made before the clock was set (memory spill)
            created = self.wallclock()
        evicted: list[Evicted] = []
        self._open_db.execute("BEGIN IMMEDIATE")
        try:
            if not self._room_possible(batch):
                # Everything stored outranks it: the incoming batch is the lowest-priority one, so it is
                # the one evicted (counted, never stored); higher priority is never evicted for lower.
                name = batch.priority.name
                self._count(**{f"evicted_{name}_batches": 1, f"evicted_{name}_samples": batch.sample_count,
                               f"evicted_{name}_bytes": batch.size})
                self._open_db.execute("COMMIT")
                return [Evicted(batch.id, batch.priority, batch.sample_count, batch.size)]
            while (self.total_bytes + batch.size > self.max_bytes
                   or (self.max_batches is not None and self.total_batches + 1 > self.max_batches)):
                seq, vid, prio, count, size = self._open_db.execute(
                    "SELECT seq, id, priority, sample_count, size FROM batches "
                    "WHERE priority <= ? ORDER BY priority, seq LIMIT 1", (int(batch.priority),)).fetchone()
                self._open_db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                name = _priority(prio).name
                self._count(**{f"evicted_{name}_batches": 1, f"evicted_{name}_samples": count,
                               f"evicted_{name}_bytes": size})
                self.total_bytes -= size
                self.total_batches -= 1
                evicted.append(Evicted(vid, _priority(prio), count, size))
            self._open_db.execute(
                f"INSERT OR IGNORE INTO batches ({_COPY_COLUMNS}, event) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (batch.id, int(batch.priority), created, batch.encoding, batch.content_type,
                 batch.content_encoding, batch.sample_count, batch.first_t, batch.last_t, batch.vehicle,
                 ",".join(batch.buses), batch.size, batch.payload, int(batch.simulated), checksum(batch.payload),
                 orjson.dumps(batch.event).decode() if batch.event else ""))
            self._count(stored_batches=1, stored_samples=batch.sample_count, stored_bytes=batch.size)
            self._open_db.execute("COMMIT")
        except BaseException:
            self._rollback()
            with contextlib.suppress(sqlite3.Error):
                self.total_bytes, self.total_batches = self._open_db.execute(
                    "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM batches").fetchone()
            raise
        self.total_bytes += batch.size
        self.total_batches += 1
        return evicted

    def _room_possible(self, batch: Batch) -> bool:
        """Whether evicting batches of its priority or lower can make room for it."""
        n, size = self._open_db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches WHERE priority <= ?",
                                  (int(batch.priority),)).fetchone()
        if self.total_bytes - size + batch.size > self.max_bytes:
            return False
        return self.max_batches is None or self.total_batches - n + 1 <= self.max_batches

    @_guarded
    def next_batches(self, limit: int = 1, exclude: set[str] | frozenset[str] = frozenset()) -> list[Batch]:
        """The next batches to send: highest priority first, then oldest first; only batches whose payload
        matches its checksum (one that does not is quarantined here, and the next one taken instead)."""
        while True:
            rows = self._open_db.execute(
                f"SELECT {_SEND_COLUMNS}, sha256, event FROM batches ORDER BY priority DESC, seq LIMIT ?",
                (limit + len(exclude),)
            ).fetchall()
            damaged = [(r[0], why) for r in rows if r[0] not in exclude and (why := _row_problem(r))]
            if not damaged:
                return [_row_to_batch(r) for r in rows if r[0] not in exclude][:limit]
            for bid, why in damaged:
                self._quarantine(bid, why)

    @_guarded
    def quarantine(self, batch_id: str, reason: str) -> Quarantined | None:
        """Take a batch out of the queue into the quarantine (a sink could not prepare it); None if it was
        already gone."""
        return self._quarantine(batch_id, reason)

    def _quarantine(self, batch_id: str, reason: str) -> Quarantined | None:
        """Move one batch to the quarantine table and count it, in one transaction; then trim the quarantine
        to its byte bound, oldest first (counted as discarded: their bytes are gone, their count stays)."""
        now = self.wallclock()
        self._open_db.execute("BEGIN IMMEDIATE")
        try:
            row = self._open_db.execute("SELECT priority, sample_count, size FROM batches WHERE id = ?",
                                  (batch_id,)).fetchone()
            if row is None:
                self._open_db.execute("COMMIT")
                return None
            row = (row[0], *(v if type(v) is int else 0 for v in row[1:]))  # a damaged row's counts: none
            self._open_db.execute(
                f"INSERT INTO quarantine ({_COPY_COLUMNS}, quarantined, reason) "
                f"SELECT {_COPY_COLUMNS}, ?, ? FROM batches WHERE id = ?", (now, reason, batch_id))
            self._open_db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            self._count(quarantined_batches=1, quarantined_samples=row[1], quarantined_bytes=row[2])
            discarded = self._trim_quarantine()
            self._open_db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.total_bytes -= row[2]
        self.total_batches -= 1
        entry = Quarantined(batch_id, _priority(row[0]), row[1], row[2], now, reason)
        log.error("batch_quarantined", batch_id=batch_id, priority=entry.priority.name, samples=row[1],
                  bytes=row[2], reason=reason, discarded_from_quarantine=discarded, path=str(self.path),
                  action="not sent; kept in the store's quarantine table; the queue goes on")
        return entry

    def _trim_quarantine(self) -> int:
        held = self._open_db.execute("SELECT COALESCE(SUM(size), 0) FROM quarantine").fetchone()[0]
        discarded = 0
        while held > self.quarantine_max_bytes:
            seq, size = self._open_db.execute("SELECT seq, size FROM quarantine ORDER BY seq LIMIT 1").fetchone()
            self._open_db.execute("DELETE FROM quarantine WHERE seq = ?", (seq,))
            held -= size
            discarded += 1
        self._count(quarantine_discarded_batches=discarded)
        return discarded

    def _checksum_legacy_rows(self) -> None:
        """Rows of a store written before checksums: a payload its codec reads gets its checksum now, one
        it cannot read is quarantined (it may have been damaged already). Once per file, row by row."""
        ids = [r[0] for r in self._open_db.execute("SELECT id FROM batches WHERE sha256 IS NULL")]
        if not ids:
            return
        from agent.codec import codec_by_content  # only for this one-time migration

        self.total_bytes = self.total_batches = 0  # recounted by _connect right after

        bad = 0
        for bid in ids:
            ctype, payload = self._open_db.execute("SELECT content_type, payload FROM batches WHERE id = ?",
                                             (bid,)).fetchone()
            try:
                codec_by_content(ctype).decode(payload)
            except Exception as exc:  # noqa: BLE001 - any failure to read it back is a damaged batch
                self._quarantine(bid, f"stored before checksums and unreadable: {exc}")
                bad += 1
                continue
            self._open_db.execute("UPDATE batches SET sha256 = ? WHERE id = ?", (checksum(payload), bid))
        log.info("store_checksums_added", path=str(self.path), batches=len(ids) - bad, quarantined=bad)

    @_guarded
    def ack(self, batch_id: str) -> bool:
        """The sink acknowledged the batch: delete it. False if it was already gone (evicted, expired)."""
        self._open_db.execute("BEGIN IMMEDIATE")
        try:
            row = self._open_db.execute("SELECT sample_count, size FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is not None:
                self._open_db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
                self._count(sent_batches=1, sent_samples=row[0], sent_bytes=row[1])
            self._open_db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if row is None:
            return False
        self.total_bytes -= row[1]
        self.total_batches -= 1
        return True

    @_guarded
    def expire(self, now: float | None = None) -> int:
        """Drop batches older than their priority's time-to-live; returns how many."""
        if self._follow_clock() or now is None:  # first: a clock just set must not make every batch look ancient
            now = self.wallclock()                 # (and a `now` read before the step is not the time)
        dropped = 0
        for prio in Priority:
            ttl = self.ttl_s.get(prio)
            if ttl is None:
                continue
            self._open_db.execute("BEGIN IMMEDIATE")
            try:
                n, samples, size = self._open_db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(sample_count), 0), COALESCE(SUM(size), 0) FROM batches "
                    "WHERE priority = ? AND created < ?", (int(prio), now - ttl)).fetchone()
                if n:
                    self._open_db.execute("DELETE FROM batches WHERE priority = ? AND created < ?", (int(prio), now - ttl))
                    self._count(**{f"expired_{prio.name}_batches": n, f"expired_{prio.name}_samples": samples,
                                   f"expired_{prio.name}_bytes": size})
                self._open_db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self.total_bytes -= size
            self.total_batches -= n
            dropped += n
        return dropped

    @_guarded
    def stats(self) -> StoreStats:
        return _stats(self._open_db)


def _stats(db: sqlite3.Connection) -> StoreStats:
    depth = {p.name: {"batches": 0, "samples": 0, "bytes": 0} for p in Priority}
    for prio, n, samples, size in db.execute(
            "SELECT priority, COUNT(*), SUM(sample_count), SUM(size) FROM batches GROUP BY priority"):
        into = depth[_priority(prio).name]  # a damaged row's priority counts as low (several rows may)
        for key, value in (("batches", n), ("samples", samples), ("bytes", size)):
            into[key] += value if type(value) is int else 0
    oldest = db.execute("SELECT MIN(created) FROM batches").fetchone()[0]
    counters = {name: value if type(value) is int else 0  # a damaged counter reads as 0
                for name, value in db.execute("SELECT name, value FROM counters")}
    quarantine = []
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'").fetchone():
        quarantine = [Quarantined(bid, _priority(prio), n, size, when, reason) for bid, prio, n, size, when, reason
                      in db.execute("SELECT id, priority, sample_count, size, quarantined, reason FROM quarantine "
                                    "ORDER BY seq DESC LIMIT ?", (QUARANTINE_LISTED,))]
    return StoreStats(depth=depth, oldest_created=oldest, counters=counters, quarantine=quarantine)


def read_stats(path: str | Path) -> StoreStats:
    """Depth and counters of a store file, read-only (for `vehicle-agent status` when the agent is stopped)."""
    db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=5)
    try:
        return _stats(db)
    finally:
        db.close()
