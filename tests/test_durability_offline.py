"""Hours offline on a simulated clock: bounded store, exact eviction and expiry, high priority kept and first.

The real Batcher, Store (a real SQLite file), Forwarder and file sink run with an injected clock; only
time is simulated. A small reference model of the specification (evict lowest priority, oldest first, never
a higher priority for a lower one; expire by per-priority TTL) predicts every eviction and expiry, and the
store's counters must match it exactly.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from agent.batcher import Batcher
from agent.codec import codec_for
from agent.config import BatchingConfig
from agent.model import Batch, Priority
from agent.store import Store
from agent.uplink.base import SinkError
from agent.uplink.fault import FaultySink
from agent.uplink.file import FileSink
from agent.uplink.forwarder import Forwarder

pytestmark = pytest.mark.durability

HOURS = 6
MAX_BYTES = 400_000
TTL = {"low": 2 * 3600.0, "normal": 24 * 3600.0, "high": 30 * 86400.0}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Model:
    """The specification, independently: what must be evicted and expired, and counted."""

    def __init__(self) -> None:
        self.rows: list[Batch] = []   # in commit order
        self.counts: dict[str, int] = {}

    def _count(self, kind: str, b: Batch) -> None:
        for unit, v in (("batches", 1), ("samples", b.sample_count), ("bytes", b.size)):
            key = f"{kind}_{b.priority.name}_{unit}"
            self.counts[key] = self.counts.get(key, 0) + v

    def put(self, b: Batch) -> list[str]:
        evictable = sum(r.size for r in self.rows if r.priority <= b.priority)
        if sum(r.size for r in self.rows) - evictable + b.size > MAX_BYTES:
            self._count("evicted", b)  # only higher priority could make room: the newcomer is evicted
            return [b.id]
        evicted = []
        while sum(r.size for r in self.rows) + b.size > MAX_BYTES:
            candidates = [r for r in self.rows if r.priority <= b.priority]
            victim = min(candidates, key=lambda r: (r.priority, self.rows.index(r)))
            self.rows.remove(victim)
            self._count("evicted", victim)
            evicted.append(victim.id)
        self.rows.append(b)
        return evicted

    def expire(self, now: float) -> None:
        for r in [r for r in self.rows if r.created < now - TTL[r.priority.name]]:
            self.rows.remove(r)
            self._count("expired", r)


async def test_hours_offline_bounded_exact_evictions_high_first(tmp_path: Path) -> None:
    clock = Clock(1_750_000_000.0)
    store = Store(tmp_path / "store.db", max_bytes=MAX_BYTES, ttl_s={Priority[p]: s for p, s in TTL.items()})
    model = Model()
    sink = FaultySink(FileSink(tmp_path / "outbox"), delivery_log=tmp_path / "deliveries.jsonl", fail_rate=1.0, seed=1)
    forwarder = Forwarder(store, sink, clock=clock)
    evictions: list[str] = []
    refused = 0
    high_ids: list[str] = []

    def on_batch(batch: Batch) -> None:
        nonlocal refused
        expected = model.put(batch)
        evicted = [e.id for e in store.put(batch)]
        assert evicted == expected
        evictions.extend(evicted)
        refused += batch.id in evicted
        if batch.priority is Priority.high:
            high_ids.append(batch.id)
        assert store.stats().bytes <= MAX_BYTES

    batcher = Batcher(BatchingConfig(max_age_s=60, max_samples=5000), codec_for("columnar"), vehicle="car",
                      on_batch=on_batch, clock=clock, wallclock=clock)
    key = {p: ("pt", "Msg", f"Sig_{p.name}") for p in Priority}
    value = 0
    rng = random.Random(3)
    for second in range(HOURS * 3600):
        clock.t += 1
        value += 1
        for p, n in ((Priority.low, 4), (Priority.normal, 2)):
            for k in range(n):
                batcher.add(p, key[p], clock.t + k / n, rng.random())  # random floats barely compress
        if second % 600 == 0:
            batcher.add(Priority.high, key[Priority.high], clock.t, second)
        batcher.tick()
        if second % 600 == 0:
            model.expire(clock.t)
            store.expire(clock.t)
            if store.stats().batches:
                with pytest.raises(SinkError):
                    await forwarder.send_one()  # the link is down: nothing leaves, nothing is lost
    batcher.flush()

    counters = store.stats().counters
    spec = {k: v for k, v in model.counts.items()}
    got = {k: v for k, v in counters.items() if k.startswith(("evicted_", "expired_"))}
    assert got == spec
    sys.stderr.write(f"offline {HOURS} h: {got}\n")
    assert counters.get("evicted_low_batches", 0) > 0 and "evicted_high_batches" not in counters
    assert refused > 0 and len(evictions) == sum(v for k, v in spec.items() if k.endswith("_batches")
                                                  and k.startswith("evicted_"))
    assert [b.id for b in store.next_batches(10_000)] == \
        [r.id for r in sorted(model.rows, key=lambda r: (-r.priority, model.rows.index(r)))]

    # The link returns: drain at full speed; every high batch ever stored goes first.
    sink.fail_rate = 0.0
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    while await forwarder.send_one():
        pass
    store.db.set_trace_callback(None)
    reads = [q for q in statements if "payload" in q and q.lstrip().upper().startswith("SELECT")]
    assert reads and all(q.rstrip().endswith("LIMIT 1") for q in reads)  # one batch in memory at a time
    sent = [json.loads(x) for x in (tmp_path / "deliveries.jsonl").read_text().splitlines()]
    prios = [d["priority"] for d in sent]
    assert prios == sorted(prios, key=lambda p: -Priority[p])
    assert [d["id"] for d in sent if d["priority"] == "high"] == high_ids == \
        [r.id for r in model.rows if r.priority is Priority.high]
    assert len(high_ids) == HOURS * 6  # one event every 10 min, each its own batch
    assert [d["id"] for d in sent] == [r.id for r in sorted(model.rows, key=lambda r: (-r.priority,
                                                                                       model.rows.index(r)))]
    assert store.stats().batches == 0
    store.close()
