"""Fault injection (`sink.fault`, testing and diagnostics only): any sink made slow, unreliable or buggy.

It exists to test retries, supervision and crash safety and to rehearse failure handling on a bench:
a delay before each acknowledgement, sends that fail (no acknowledgement, the batch stays stored),
sends that raise an unexpected error as a bug would, and an append-only, fsynced log of every
acknowledged send (id, priority, samples, SHA-256 of the payload) to check delivery from outside.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import orjson

from agent.model import Batch
from agent.uplink.base import Sink, SinkError


class FaultySink(Sink):
    """Wraps a sink; with every knob at zero it only passes batches through (and logs deliveries)."""

    def __init__(self, inner: Sink, *, fail_rate: float = 0.0, ack_delay_ms: int = 0, seed: int | None = None,
                 delivery_log: str | Path | None = None, crash_first: int = 0) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_rate = fail_rate
        self.ack_delay_s = ack_delay_ms / 1000
        self.rng = random.Random(seed)
        self.delivery_log = Path(delivery_log) if delivery_log else None
        self.injected_failures = 0
        self.crashes_left = crash_first

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def send(self, batch: Batch) -> None:
        if self.ack_delay_s:
            await asyncio.sleep(self.ack_delay_s)
        if self.crashes_left:
            self.crashes_left -= 1
            raise RuntimeError("injected crash (sink.fault.crash_first)")
        if self.fail_rate and self.rng.random() < self.fail_rate:
            self.injected_failures += 1
            raise SinkError("injected failure (sink.fault.fail_rate)")
        await self.inner.send(batch)
        if self.delivery_log is not None:
            await asyncio.to_thread(self._log_delivery, self.delivery_log, batch)

    def _log_delivery(self, path: Path, batch: Batch) -> None:
        """Append-only record of every acknowledged send, written (and synced) before the ack returns."""
        line = orjson.dumps({"id": batch.id, "priority": batch.priority.name, "samples": batch.sample_count,
                             "sha256": hashlib.sha256(batch.payload).hexdigest()}) + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def state(self) -> dict[str, Any]:
        st = self.inner.state()
        if self.fail_rate or self.ack_delay_s:
            st["injected_failures"] = self.injected_failures
        return st
