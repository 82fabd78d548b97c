"""The periodic summary log line: what a headless agent did since the last one.

Without a TTY (systemd, containers) there is no progress line, and a healthy agent logs nothing
between `agent_start` and `agent_stopped`. One `summary` line every `summary_interval_s` (default
60 s) tells a reader of `journalctl` or `docker logs` that it works and how well: rates, what was
kept, stored and sent in the interval, the store's depth, and everything lost or refused.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from agent.status.document import StatusDocument

log = structlog.get_logger()

# What a bus's source counts as frames it lost (of agent.status.document.SOURCE_KEYS), summed over the buses.
SOURCE_DROPS = ("kernel_drops", "backlog_drops", "unreadable_frames")
# batches or frames lost
DROPS = ("evicted", "expired", "spill_dropped", *SOURCE_DROPS)
ERRORS = ("decode_errors", "error_frames")


def _totals(doc: StatusDocument) -> dict[str, int]:
    """The status document's monotonic counters this line reports differences of."""
    buses = doc.buses.values()
    counters = doc.store.counters
    totals = {"frames": sum(b.counts.frames for b in buses), "kept": sum(b.counts.samples for b in buses),
              "stored": counters.get("stored_batches", 0), "sent": counters.get("sent_batches", 0),
              "evicted": sum(v for k, v in counters.items() if k.startswith("evicted_") and k.endswith("_batches")),
              "expired": sum(v for k, v in counters.items() if k.startswith("expired_") and k.endswith("_batches")),
              "spill_dropped": doc.store.spill.get("dropped_batches", 0) or 0,
              "decode_errors": sum(b.counts.decode_errors for b in buses),
              "error_frames": sum(b.counts.error_frames for b in buses)}
    for key in SOURCE_DROPS:
        totals[key] = sum(int(b.source.get(key) or 0) for b in buses)
    return totals


class SummaryLog:
    """Logs a `summary` event every `interval_s` (0: never) from the status documents it is shown."""

    def __init__(self, interval_s: float, clock: Any = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last_t = clock()
        self.last: dict[str, int] | None = None

    def observe(self, doc: StatusDocument) -> dict[str, Any] | None:
        """Take a fresh status document; log and return the summary when one is due."""
        now = self.clock()
        totals = _totals(doc)
        if self.last is None:
            self.last, self.last_t = totals, now
            return None
        if not self.interval_s or now - self.last_t < self.interval_s:
            return None
        dt = now - self.last_t
        delta = {k: v - self.last.get(k, 0) for k, v in totals.items()}
        self.last, self.last_t = totals, now
        store, buses = doc.store, doc.buses
        fields: dict[str, Any] = {
            "interval_s": round(dt, 1),
            "frames_per_s": round(delta["frames"] / dt, 1),
            "samples_kept": delta["kept"], "batches_stored": delta["stored"], "batches_sent": delta["sent"],
            "store_depth_batches": store.batches, "store_depth_bytes": store.bytes,
            "dropped": {k: delta[k] for k in DROPS if delta[k] > 0},  # a reopened socket restarts kernel_drops
            "errors": {k: delta[k] for k in ERRORS if delta[k] > 0},
            "sink": doc.sink.forwarder.state,
            "buses": {name: b.state for name, b in buses.items()},
        }
        simulated = sorted(name for name, b in buses.items() if b.simulated)
        if simulated:
            fields["simulated"] = simulated
        if store.error:
            fields["store_error"] = store.error
        log.info("summary", **fields)
        return fields
