"""The forwarder: drains the store into the sink, one acknowledged batch at a time.

At-least-once: a batch is deleted only after `sink.send` returned. Failures back off exponentially
with jitter up to a cap; when the link is back the store drains at full speed, reading one batch at
a time so pending data never has to fit in memory.

The store hands out only batches whose bytes match their checksum. A batch the sink cannot prepare
(`UnsendableBatch`), or one on which the sink raised an unexpected error `POISON_AFTER` times, is
quarantined so one bad batch never blocks the queue; any other unexpected error propagates to the
supervisor, which logs, counts and restarts this loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.liveness import backoff_delay, beat, pause, wait_first
from agent.store import Store
from agent.uplink.base import Sink, SinkError, UnsendableBatch

log = structlog.get_logger()

POISON_AFTER = 3  # unexpected sink errors on the same batch before it is quarantined instead of retried


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
        self._crashes: tuple[str, int] = ("", 0)  # (batch id, unexpected sink errors on it in a row)

    def notify(self) -> None:
        """A batch was stored: wake the drain loop."""
        self.wake.set()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        beat()
        self.wake.clear()
        await wait_first(stop, self.wake, timeout=seconds)

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
        await pause(stop, delay)

    async def send_one(self) -> bool:
        """Send the next stored batch; True if one was sent, False if the store is empty."""
        if not self._opened:
            await self.sink.open()
            self._opened = True
        batches = self.store.next_batches(1)
        if not batches:
            return False
        batch = batches[0]
        try:
            await self.sink.send(batch)
        except UnsendableBatch as exc:
            self.store.quarantine(batch.id, f"{self.sink.name} sink cannot prepare it: {exc}")
            return True
        except (SinkError, OSError, asyncio.CancelledError):
            raise
        except Exception as exc:
            crashes = self._crashes[1] + 1 if self._crashes[0] == batch.id else 1
            self._crashes = (batch.id, crashes)
            if crashes < POISON_AFTER:
                raise
            self.store.quarantine(batch.id, f"{self.sink.name} sink failed on it {crashes} times: "
                                            f"{type(exc).__name__}: {exc}")
            return True
        self.store.ack(batch.id)
        st = self.status
        st.state, st.last_send, st.consecutive_failures, st.backoff_s = "connected", self.clock(), 0, 0.0
        st.sent_batches += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until `stop` is set."""
        last_expire = 0.0
        while not stop.is_set():
            beat()
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
            except Exception as exc:  # noqa: BLE001 - shutdown must end cleanly; the batch stays stored
                log.error("final_drain_failed", sink=self.sink.name, error=f"{type(exc).__name__}: {exc}",
                          action="the batch stays in the store for the next start")
                break
        return sent

    async def close(self) -> None:
        self.status.state = "stopped"
        if self._opened:
            await self.sink.close()
            self._opened = False
