"""The store as the batcher sees it: a batch is committed, or held in a bounded memory spill.

A full or read-only disk, or a store file being replaced after corruption, must not stop collection:
closed batches wait in memory (at most `max_bytes`; beyond it the oldest are dropped, logged and
counted), the spill is retried (every put, and by the agent's housekeeping) and drains into the
store in order once it is writable again.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from agent.model import Batch
from agent.store.sqlite import Store, StoreFullError

log = structlog.get_logger()


class SpillingStore:
    """Wraps a `Store`: `put` never raises for a disk problem; `error` says what the store said last."""

    def __init__(self, store: Store, *, max_bytes: int, on_stored: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.on_stored = on_stored  # a batch was committed (wakes the forwarder)
        self.spill: deque[Batch] = deque()
        self.bytes = 0
        self.dropped_samples = 0
        self.dropped_batches = 0
        self.error: str | None = store.open_error

    def __bool__(self) -> bool:
        """Whether batches wait in memory."""
        return bool(self.spill)

    def put(self, batch: Batch) -> None:
        """The batcher's output: commit to the store, or keep it in the bounded memory spill."""
        if self.spill:
            self.retry()
        if self.spill:
            self._to_spill(batch)
            return
        try:
            self._commit(batch)
        except (sqlite3.Error, OSError) as exc:
            self.failed(exc)
            self._to_spill(batch)
            return
        self._recovered()

    def retry(self) -> None:
        """Move what the spill holds into the store, oldest first, until the store fails again."""
        while self.spill:
            batch = self.spill[0]
            try:
                self._commit(batch)
            except (sqlite3.Error, OSError) as exc:
                self.failed(exc)
                return
            self.spill.popleft()
            self.bytes -= batch.size
        self._recovered()

    def failed(self, exc: Exception) -> None:
        """The store could not be written or read: logged once per distinct error, shown in status."""
        if self.error != str(exc):
            log.error("store_write_failed", path=str(self.store.path), error=str(exc),
                      action="keeping batches in memory until the store is writable")
        self.error = str(exc)

    def drop_all(self) -> None:
        """At a stop with the store still not writable: what memory holds is lost now, counted."""
        while self.spill:
            self._drop(self.spill.popleft(), "stopped while the store was not writable")
        self.bytes = 0

    def status(self) -> dict[str, Any]:
        return {"batches": len(self.spill), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "dropped_batches": self.dropped_batches, "dropped_samples": self.dropped_samples}

    def _recovered(self) -> None:
        if self.error:
            log.info("store_recovered", path=str(self.store.path))
        self.error = None

    def _commit(self, batch: Batch) -> None:
        """Commit one batch; log what it evicted. A batch larger than the whole store is dropped, loudly."""
        try:
            evicted = self.store.put(batch)
        except StoreFullError as exc:  # counted by the store (too_large_*)
            log.error("store_batch_too_large", batch_id=batch.id, bytes=batch.size, error=str(exc),
                      fix="raise store.max_bytes above batching.max_bytes")
            return
        for ev in evicted:
            log.warning("store_evicted", batch_id=ev.id, priority=ev.priority.name, samples=ev.samples, bytes=ev.bytes,
                        reason="store full (store.max_bytes / store.max_batches)")
        self.on_stored()

    def _to_spill(self, batch: Batch) -> None:
        self.spill.append(batch)
        self.bytes += batch.size
        while self.bytes > self.max_bytes and len(self.spill) > 1:
            old = self.spill.popleft()
            self.bytes -= old.size
            self._drop(old, "memory spill full (store.spill_max_bytes)")

    def _drop(self, batch: Batch, reason: str) -> None:
        self.dropped_samples += batch.sample_count
        self.dropped_batches += 1
        log.error("spill_dropped", batch_id=batch.id, samples=batch.sample_count, bytes=batch.size,
                  lost_samples_total=self.dropped_samples, reason=reason)
