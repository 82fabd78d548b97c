"""The forwarder: drains the store into the sink, one acknowledged batch at a time.

At-least-once: a batch is deleted only after `sink.send` returned. Failures back off exponentially
with jitter up to a cap; when the link is back the store drains at full speed, reading one batch at
a time so pending data never has to fit in memory.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.store import Store
from agent.uplink.base import Sink, SinkError

log = structlog.get_logger()


@dataclass(slots=True)
class ForwarderState:
    """What the uplink is doing, for status and the twin."""

    state: str = "starting"          # starting | connected | failing | stopped
    last_send: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    backoff_s: float = 0.0
    sent_batches: int = 0

    def as_dict(self) -> dict:
        return {"state": self.state, "last_send": self.last_send, "last_error": self.last_error,
                "consecutive_failures": self.consecutive_failures, "backoff_s": round(self.backoff_s, 3),
                "sent_batches": self.sent_batches}


def backoff_delay(failures: int, initial: float, cap: float, rng: random.Random = random._inst) -> float:
    """Capped exponential backoff with 'equal jitter': between half and all of initial * 2^(n-1)."""
    ceiling = min(cap, initial * (2 ** max(0, failures - 1)))
    return ceiling / 2 + rng.random() * ceiling / 2


class Forwarder:
    def __init__(self, store: Store, sink: Sink, *, retry_initial_s: float = 1.0, retry_max_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock  # wall time for TTL expiry and last_send; injectable for simulated-clock tests
        self.sink = sink
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.wake = asyncio.Event()
        self.status = ForwarderState()
        self._opened = False

    def notify(self) -> None:
        """A batch was stored: wake the drain loop."""
        self.wake.set()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        self.wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _fail(self, stop: asyncio.Event, error: Exception) -> None:
        st = self.status
        st.consecutive_failures += 1
        st.state = "failing"
        st.last_error = str(error)
        delay = backoff_delay(st.consecutive_failures, self.retry_initial_s, self.retry_max_s)
        if isinstance(error, SinkError) and error.retry_after:
            delay = max(delay, error.retry_after)
        st.backoff_s = delay
        log.warning("sink_failed", sink=self.sink.name, error=str(error), retry_in_s=round(delay, 2),
                    failures=st.consecutive_failures)
        # Only `stop` ends a backoff early: new batches must not turn backoff into a busy retry loop.
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def send_one(self) -> bool:
        """Send the next stored batch; True if one was sent, False if the store is empty."""
        if not self._opened:
            await self.sink.open()
            self._opened = True
        batches = self.store.next_batches(1)
        if not batches:
            return False
        batch = batches[0]
        await self.sink.send(batch)
        self.store.ack(batch.id)
        st = self.status
        st.state, st.last_send, st.consecutive_failures, st.backoff_s = "connected", self.clock(), 0, 0.0
        st.sent_batches += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until `stop` is set."""
        last_expire = 0.0
        while not stop.is_set():
            now = self.clock()
            try:
                if now - last_expire > 10:
                    last_expire = now
                    dropped = self.store.expire(now)
                    if dropped:
                        log.warning("store_expired", batches=dropped)
                sent = await self.send_one()
            except (SinkError, OSError) as exc:
                await self._fail(stop, exc)
                continue
            except sqlite3.Error as exc:
                # The store itself failed (read-only, full, corrupt and moved aside): not the sink's fault.
                log.error("store_read_failed", path=str(self.store.path), error=str(exc))
                await self._wait(stop, 1.0)
                continue
            if not sent:
                if self.status.state == "starting":
                    self.status.state = "connected"
                await self._wait(stop, 1.0)
            else:
                await asyncio.sleep(0)  # let the sources run between sends

    async def drain(self, deadline_s: float) -> int:
        """Best-effort final drain at shutdown: send what the sink takes before the deadline."""
        sent = 0
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                remaining = end - time.monotonic()
                if not await asyncio.wait_for(self.send_one(), timeout=max(0.01, remaining)):
                    break
                sent += 1
            except (SinkError, OSError, TimeoutError):
                break
        return sent

    async def close(self) -> None:
        self.status.state = "stopped"
        if self._opened:
            await self.sink.close()
            self._opened = False
