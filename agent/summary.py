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

log = structlog.get_logger()

# Per-bus counters summed over the buses: frames the kernel dropped, and problems of the bus.
BUS_KEYS = ("kernel_drops", "backlog_drops", "unreadable_frames", "decode_errors", "error_frames")
# batches or frames lost
DROPS = ("evicted", "expired", "spill_dropped", "kernel_drops", "backlog_drops", "unreadable_frames")
ERRORS = ("decode_errors", "error_frames")


def _totals(doc: dict[str, Any]) -> dict[str, int]:
    """The status document's monotonic counters this line reports differences of."""
    buses = doc.get("buses", {}).values()
    store = doc.get("store", {})
    counters = store.get("counters", {}) or {}
    spill = store.get("spill", {}) or {}
    totals = {"frames": sum(b.get("frames", 0) for b in buses), "kept": sum(b.get("samples", 0) for b in buses),
              "stored": counters.get("stored_batches", 0), "sent": counters.get("sent_batches", 0),
              "evicted": sum(v for k, v in counters.items() if k.startswith("evicted_") and k.endswith("_batches")),
              "expired": sum(v for k, v in counters.items() if k.startswith("expired_") and k.endswith("_batches")),
              "spill_dropped": spill.get("dropped_batches", 0) or 0}
    for key in BUS_KEYS:
        totals[key] = sum(b.get(key, 0) or 0 for b in buses)
    return totals


class SummaryLog:
    """Logs a `summary` event every `interval_s` (0: never) from the status documents it is shown."""

    def __init__(self, interval_s: float, clock: Any = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last_t = clock()
        self.last: dict[str, int] | None = None

    def observe(self, doc: dict[str, Any]) -> dict[str, Any] | None:
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
        store = doc.get("store", {})
        buses = doc.get("buses", {})
        fields: dict[str, Any] = {
            "interval_s": round(dt, 1),
            "frames_per_s": round(delta["frames"] / dt, 1),
            "samples_kept": delta["kept"], "batches_stored": delta["stored"], "batches_sent": delta["sent"],
            "store_depth_batches": store.get("batches"), "store_depth_bytes": store.get("bytes"),
            "dropped": {k: delta[k] for k in DROPS if delta[k] > 0},  # a reopened socket restarts kernel_drops
            "errors": {k: delta[k] for k in ERRORS if delta[k] > 0},
            "sink": doc.get("sink", {}).get("state"),
            "buses": {name: b.get("state") for name, b in buses.items()},
        }
        simulated = sorted(name for name, b in buses.items() if b.get("simulated"))
        if simulated:
            fields["simulated"] = simulated
        if store.get("error"):
            fields["store_error"] = store["error"]
        log.info("summary", **fields)
        return fields
