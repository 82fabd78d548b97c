"""Progress beats and the one backoff: the bottom layer of supervision, importable from any part.

A supervised task beats (`beat()`) while it makes progress; `pause` is a long wait that is not a
wedge. The supervisor (agent/supervisor.py) sets which task a beat belongs to; outside a supervised
task both are plain. `backoff_delay` is the capped exponential backoff every retry loop uses.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from typing import Any

current: contextvars.ContextVar[Any] = contextvars.ContextVar("supervised_worker", default=None)


def beat() -> None:
    """The calling task made progress (no-op outside a supervised task). Cheap: call it every loop."""
    worker = current.get()
    if worker is not None:
        worker.last_beat = time.monotonic()


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait up to `seconds` for `stop`, beating every second: a long wait is not a wedge."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        beat()
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=min(remaining, 1.0))
        except TimeoutError:
            pass


async def wait_first(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of `events` is set, or `timeout` s (a loop's stop and its wake-up)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def backoff_delay(failures: int, initial: float, cap: float, rng: random.Random = random._inst, *,
                  jitter: bool = True) -> float:
    """Capped exponential backoff, initial * 2^(n-1) up to `cap`, with 'equal jitter' (between half and all of
    it) where many clients could retry together (a fleet toward one hub). `jitter=False`: exactly that, for a
    local resource no one else retries (a CAN interface reopened: 1, 2, 4, ... 30 s, as its log says)."""
    # a float power, its exponent bounded: 2 ** 1024 as an int does not fit a float (OverflowError), and a bus
    # reopened every 30 s fails 1,024 times in 8.5 hours (a sink offline for days, its sends as many)
    ceiling = min(cap, initial * 2.0 ** min(max(0, failures - 1), 1000))
    return ceiling / 2 + rng.random() * ceiling / 2 if jitter else ceiling
