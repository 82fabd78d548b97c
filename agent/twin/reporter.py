"""Reported state for any control channel: built from `Control.status()` (the typed status document),
throttled, changes coalesced.

IoT Hub limits twin updates per device (and MQTT brokers should not be flooded either), so the
reporter publishes at most one patch per `interval_s`, holding only the top-level sections that
changed since the last publish. The transport supplies only `publish(patch)`; acks of desired
properties are not throttled (they are rare and the fleet waits for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from agent.status.document import BusStatus, StatusDocument

log = structlog.get_logger()

SECRET_WORDS = ("key", "secret", "password", "token", "connection_string", "sas")


def _without_secrets(doc: Any) -> Any:
    """Drop any key that smells of a credential: the twin is readable by every fleet operator."""
    if isinstance(doc, dict):
        return {k: _without_secrets(v) for k, v in doc.items()
                if not any(w in str(k).lower() for w in SECRET_WORDS)}
    if isinstance(doc, list):
        return [_without_secrets(v) for v in doc]
    return doc


# What the reported properties carry of a bus's source (of agent.status.document.SOURCE_KEYS)
REPORTED_SOURCE_KEYS = ("state", "lost_frames", "kernel_drops", "backlog_drops", "unreadable_frames", "rcvbuf_bytes",
                        "controller", "errors", "tx_error_counter", "rx_error_counter")


def reported_bus(bus: BusStatus) -> dict[str, Any]:
    """A bus as reported: its rate and counters, its source's state and losses, whether simulated."""
    c = bus.counts
    return {"frames_per_s": bus.frames_per_s, "frames": c.frames, "error_frames": c.error_frames,
            "unknown_ids": c.unknown_ids, "decode_errors": c.decode_errors,
            "refused_timestamps": c.refused_timestamps, "refused_values": c.refused_values, "samples": c.samples,
            **{k: bus.source[k] for k in REPORTED_SOURCE_KEYS if k in bus.source}, "simulated": bus.simulated,
            **({"simulator": bus.simulator} if bus.simulator is not None else {})}


def reported_doc(status: StatusDocument) -> dict[str, Any]:
    """The reported properties of the agent: identity, applied config, buses, store and uplink."""
    agent, store, sink, forwarder = status.agent, status.store, status.sink, status.sink.forwarder
    return _without_secrets({
        "agent": {"version": agent.version, "started": agent.started, "host": agent.host,
                  "vehicle_id": agent.vehicle_id},
        "config_version": agent.config_version,
        "frames_per_s": status.frames_per_s,
        "buses": {name: reported_bus(bus) for name, bus in status.buses.items()},
        "store": {"batches": store.batches, "bytes": store.bytes, "oldest_pending_age_s": store.oldest_pending_age_s,
                  "counters": store.counters, "error": store.error, "evictions": evictions(store.counters)},
        "losses": status.losses(),
        "tasks": {name: {"state": t.state, "restarts": t.restarts, "last_error": t.last_error}
                  for name, t in status.tasks.items()},
        "uplink": {"type": sink.type, "state": forwarder.state,
                   **{k: sink.sink[k] for k in ("connected", "link") if k in sink.sink},  # a cloud sink's link
                   "last_send": forwarder.last_send, "backoff_s": forwarder.backoff_s,
                   "last_error": forwarder.last_error, "sent_batches": forwarder.sent_batches,
                   "consecutive_failures": forwarder.consecutive_failures},
        "control": status.control,
        "status_file": {"write_failures": status.status_file.write_failures,
                        "last_error": status.status_file.last_error},
        # not "campaigns": that name carries the acks of the desired property
        "campaign_state": status.campaigns or None,
        # not "databases" either: the desired property's ack (agent/remotedb)
        "database_state": status.databases,
        # not "software_update": that name carries the ack of the desired property
        "software_update_state": status.software_update,
    })


def evictions(counters: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Batches and samples evicted from the full store, per priority (from the store's counters)."""
    return {p: {"batches": int(counters.get(f"evicted_{p}_batches", 0)),
                "samples": int(counters.get(f"evicted_{p}_samples", 0))} for p in ("low", "normal", "high")}


class Reporter:
    """Publishes the reported doc's changed sections, at most once per `interval_s`."""

    def __init__(self, status: Callable[[], StatusDocument], publish: Callable[[dict[str, Any]], Awaitable[None]],
                 *, interval_s: float = 30.0, ready: Callable[[], bool] = lambda: True) -> None:
        self.status = status
        self.publish = publish
        self.ready = ready  # False while the channel has no link: nothing is tried (a reconnect resets)
        self.interval_s = interval_s
        self.last: dict[str, Any] = {}
        self.last_publish = 0.0
        self.published = 0
        self.wake = asyncio.Event()

    def reset(self) -> None:
        """After a reconnect: the twin may have missed updates, so send everything next time."""
        self.last = {}
        self.wake.set()

    def changes(self) -> dict[str, Any]:
        doc = reported_doc(self.status())
        return {k: v for k, v in doc.items() if self.last.get(k) != v}

    async def publish_due(self) -> bool:
        """Publish the coalesced changes if the interval allows; True if something was sent."""
        if self.published and time.monotonic() - self.last_publish < self.interval_s:
            return False  # also after a reconnect: a flapping link must not flood the hub
        if not self.ready():
            return False
        patch = self.changes()
        if not patch:
            return False
        await self.publish(patch)
        self.last.update(patch)
        self.last_publish = time.monotonic()
        self.published += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until stop; publish failures are logged and retried at the next interval."""
        while not stop.is_set():
            try:
                await self.publish_due()
            except Exception as exc:  # noqa: BLE001 - the transport's errors vary; never kill the loop
                log.warning("reported_publish_failed", error=str(exc) or type(exc).__name__)
                self.last_publish = time.monotonic()
            wait = max(1.0, self.interval_s - (time.monotonic() - self.last_publish)) if self.published else 1.0
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self.wake), timeout=wait)


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
