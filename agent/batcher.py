"""Batching: kept samples in, encoded immutable batches out, one open batch per priority.

A batch closes when it holds `max_samples`, when it is `max_age_s` old, or on flush. It never holds
more than `max_samples`: the collector appends a whole drain (up to 20,000 frames of a replay) before
the count is checked, so a batch over the cap is cut at it (at a time: the oldest samples of every
signal), and what is left over stays open. Its encoded size never exceeds `max_bytes` (IoT Hub's 256 KB message
limit): an oversized encoding is split in halves and encoded again. The open batches are the
in-memory window that a power loss can lose.
"""

from __future__ import annotations

import time
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import structlog

from agent.codec import Codec, RawValues, Scaling, Unencodable
from agent.config import BatchingConfig
from agent.model import Batch, Priority

log = structlog.get_logger()

ColumnKey = tuple[str, str, str]


class _OpenBatch:
    __slots__ = ("columns", "count", "opened")

    def __init__(self, now: float) -> None:
        self.columns: dict[ColumnKey, tuple[list[float], list]] = {}
        self.count = 0
        self.opened = now


def new_batch_id(now: float | None = None) -> str:
    """Unique and sortable by creation time: 12 hex digits of ms, then 20 random ones."""
    return f"{int((time.time() if now is None else now) * 1000):012x}{uuid.uuid4().hex[:20]}"


class Batcher:
    """Groups samples by priority into batches and hands closed batches to `on_batch`."""

    def __init__(self, cfg: BatchingConfig, codec: Codec, *, vehicle: str, on_batch: Callable[[Batch], None],
                 scaling: Scaling | None = None, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time,
                 on_refused: Callable[[str, int], None] | None = None) -> None:
        """`on_refused(bus, samples)`: samples left out of a batch because the codec cannot carry
        them exactly (an integer beyond 64 bits, NaN in JSON) or one alone exceeds max_bytes."""
        self.cfg = cfg
        self.on_refused = on_refused
        self.codec = codec
        self.vehicle = vehicle
        self.on_batch = on_batch
        self.scaling = scaling or {}  # read only: shared with the pipeline (a production car's is 0.3 MB)
        self.clock = clock
        self.wallclock = wallclock  # batch creation time (TTL, oldest pending age); injectable for tests
        self.open: dict[Priority, _OpenBatch] = {}
        self.generation = 0  # bumped whenever a batch closes: columns handed out before are stale
        self._unsettled = 0  # samples appended through `column` since the last recount
        self._headroom = cfg.max_samples  # samples that can arrive before any open batch can be full
        self.batches_closed = 0
        self.simulated_buses: frozenset[str] = frozenset()  # batches holding their samples are marked simulated

    def reconfigure(self, cfg: BatchingConfig, codec: Codec, vehicle: str, scaling: Scaling) -> None:
        """Take a new config: what is open is closed first under the old encoding, so nothing mixes."""
        self.flush()
        self.cfg, self.codec, self.vehicle, self.scaling = cfg, codec, vehicle, scaling
        self._unsettled, self._headroom = 0, cfg.max_samples

    def column(self, priority: Priority, key: ColumnKey, raw: bool = False) -> tuple[list[float], list]:
        """The open batch's (timestamps, values) lists of a signal: the collector appends to them directly.

        Appending to lists costs far less than a call per sample; the lists stay valid until the batch
        closes, which bumps `generation` (a collector re-fetches its columns then). Call `settle` after
        appending, so full batches close. `raw`: the column will hold raw integers (see RawValues).
        """
        ob = self.open.get(priority)
        if ob is None:
            ob = self.open[priority] = _OpenBatch(self.clock())
        col = ob.columns.get(key)
        if col is None:
            col = ob.columns[key] = ([], RawValues() if raw else [])
        return col

    def settle(self, appended: int) -> None:
        """Account for `appended` samples added through `column`; close batches that reached max_samples.

        Recounting the open columns happens only when enough samples arrived since the last recount
        that some batch could be full, so a collector can call this after every small drain.
        """
        self._unsettled += appended
        if self._unsettled < self._headroom:
            return
        for prio, ob in list(self.open.items()):
            ob.count = sum(len(ts) for ts, _ in ob.columns.values())
            if ob.count >= self.cfg.max_samples:
                self._close(prio, keep_rest=True)
        self._unsettled = 0
        self._headroom = self.cfg.max_samples - max((ob.count for ob in self.open.values()), default=0)

    def add(self, priority: Priority, key: ColumnKey, t: float, value: object) -> None:
        """One kept sample (for callers outside the hot path)."""
        ts, vs = self.column(priority, key)
        ts.append(t)
        vs.append(value)
        ob = self.open[priority]
        ob.count += 1
        self._unsettled += 1  # keeps the recount of `settle` honest when both ways are used
        if ob.count >= self.cfg.max_samples:
            self._close(priority)

    @property
    def pending_samples(self) -> int:
        return sum(len(ts) for ob in self.open.values() for ts, _ in ob.columns.values())

    def tick(self) -> None:
        """Close batches that reached their maximum age (called by the pipeline's timer)."""
        now = self.clock()
        for prio, ob in list(self.open.items()):
            if now - ob.opened >= self.cfg.max_age_s:
                self._close(prio)

    def flush(self) -> None:
        for prio in list(self.open):
            self._close(prio)

    def _close(self, priority: Priority, keep_rest: bool = False) -> None:
        """Close a priority's open batch: batches of at most max_samples each. `keep_rest`: what does not
        fill a whole batch stays open (keeping its opening time, so max_age_s still bounds its age)."""
        ob = self.open.pop(priority)
        self.generation += 1
        columns = {key: col for key, col in ob.columns.items() if col[0] or col[1]}
        while columns:
            head, columns = self._cut(columns)
            if keep_rest and not columns and sum(len(ts) for ts, _ in head.values()) < self.cfg.max_samples:
                rest = self.open[priority] = _OpenBatch(ob.opened)
                rest.columns, rest.count = head, sum(len(ts) for ts, _ in head.values())
                return
            for part, payload in self._fit(head):
                if part:
                    self._emit(priority, part, payload)

    def _cut(self, columns: dict[ColumnKey, tuple[list[float], list]]
             ) -> tuple[dict[ColumnKey, tuple[list[float], list]], dict[ColumnKey, tuple[list[float], list]]]:
        """(the max_samples oldest samples, the rest): cut at a time, so the batches cut from one drain
        follow each other in time and a rare signal's sample is not held back behind newer ones.
        Nothing is lost or reordered; a column out of time order (a damaged log) is cut by count."""
        cap = self.cfg.max_samples
        total = sum(len(ts) for ts, _ in columns.values())
        if total <= cap:
            return columns, {}
        at = sorted(chain.from_iterable(ts for ts, _ in columns.values()))[cap - 1]  # sorted runs: cheap
        take = {key: bisect_left(ts, at) for key, (ts, _) in columns.items()}  # before the cut time
        short = cap - sum(take.values())
        for upto in (lambda ts: bisect_right(ts, at), len):  # samples at the cut time; any, if a column is unsorted
            for key, (ts, _) in columns.items():
                if short <= 0:
                    break
                extra = min(short, upto(ts) - take[key])
                if extra > 0:
                    take[key] += extra
                    short -= extra
        for key in reversed(take):  # an unsorted column can make the count overshoot: give back
            if short >= 0:
                break
            back = min(-short, take[key])
            take[key] -= back
            short += back
        head: dict[ColumnKey, tuple[list[float], list]] = {}
        rest: dict[ColumnKey, tuple[list[float], list]] = {}
        for key, (ts, vs) in columns.items():
            n, kind = take[key], type(vs)  # a RawValues column stays one when cut
            if n >= len(ts):
                head[key] = (ts, vs)
            elif n == 0:
                rest[key] = (ts, vs)
            else:
                head[key] = (ts[:n], kind(vs[:n]))
                rest[key] = (ts[n:], kind(vs[n:]))
        return head, rest

    def _encode(self, columns: dict[ColumnKey, tuple[list[float], list]],
                event: Mapping[str, Any] | None = None) -> tuple[dict, bytes]:
        """(the columns encoded, the payload): what the codec cannot carry exactly is left out and
        counted, so one bad value never costs the rest of its batch."""
        simulated = self._simulated(columns)
        try:
            return columns, self.codec.encode(columns, vehicle=self.vehicle, scaling=self.scaling, simulated=simulated,
                                              event=event)
        except Unencodable as exc:
            columns, refused = self.codec.admit(columns, self.scaling)
            for key, count in refused.items():
                self._refuse(key, count, str(exc))
            return columns, self.codec.encode(columns, vehicle=self.vehicle, scaling=self.scaling, simulated=simulated,
                                              event=event)

    def _refuse(self, key: ColumnKey, count: int, reason: str) -> None:
        log.error("samples_refused", bus=key[0], message=key[1], signal=key[2], samples=count, reason=reason,
                  encoding=self.codec.name)
        if self.on_refused is not None:
            self.on_refused(key[0], count)

    def emit_event(self, priority: Priority, columns: dict[ColumnKey, tuple[list[float], list]],
                   event: Mapping[str, Any]) -> int:
        """A campaign event's samples as batches of their own, now (not mixed with open batches);
        cut at max_samples and split above max_bytes like any batch, each part saying `part`/`parts`.
        Returns the batches."""
        columns = {key: col for key, col in columns.items() if col[0]}
        parts: list[tuple[dict, bytes]] = []
        while columns:  # at most max_samples a batch, like any batch
            head, columns = self._cut(columns)
            parts += [(part, payload) for part, payload in self._fit(head, event) if part]
        for n, (part, payload) in enumerate(parts):
            meta = {**event, "part": n + 1, "parts": len(parts)} if len(parts) > 1 else dict(event)
            if len(parts) > 1:
                part, payload = self._encode(part, meta)
            self._emit(priority, part, payload, meta)
        return len(parts)

    def _fit(self, columns: dict[ColumnKey, tuple[list[float], list]],
             event: Mapping[str, Any] | None = None) -> list[tuple[dict, bytes]]:
        """Encode, splitting the columns until each part fits within max_bytes."""
        columns, payload = self._encode(columns, event)
        if len(payload) <= self.cfg.max_bytes or not columns:
            return [(columns, payload)]
        items = list(columns.items())
        if len(items) > 1:
            half = len(items) // 2
            return self._fit(dict(items[:half]), event) + self._fit(dict(items[half:]), event)
        key, (ts, vs) = items[0]
        if len(ts) <= 1:
            self._refuse(key, len(ts), f"one sample encodes to {len(payload)} bytes, more than batching.max_bytes")
            return []
        half = len(ts) // 2
        kind = type(vs)  # a RawValues column stays one when split
        return (self._fit({key: (ts[:half], kind(vs[:half]))}, event)
                + self._fit({key: (ts[half:], kind(vs[half:]))}, event))

    def _simulated(self, columns: dict[ColumnKey, tuple[list[float], list]]) -> bool:
        return bool(self.simulated_buses) and any(key[0] in self.simulated_buses for key in columns)

    def _emit(self, priority: Priority, columns: dict[ColumnKey, tuple[list[float], list]], payload: bytes,
              event: Mapping[str, Any] | None = None) -> None:
        count = sum(len(ts) for ts, _ in columns.values())
        first = min(min(ts) for ts, _ in columns.values() if ts)
        last = max(max(ts) for ts, _ in columns.values() if ts)
        created = self.wallclock()
        batch = Batch(
            id=new_batch_id(created), priority=priority, encoding=self.codec.name,
            content_type=self.codec.content_type, content_encoding=self.codec.content_encoding,
            payload=payload, sample_count=count, first_t=first, last_t=last, created=created,
            vehicle=self.vehicle, buses=tuple(sorted({k[0] for k in columns})), simulated=self._simulated(columns),
            event=event,
        )
        self.batches_closed += 1
        self.on_batch(batch)
