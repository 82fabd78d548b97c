"""Frame sources: an async iterator of frame lists per bus, drained on a short tick.

A wake-up costs ~25 us of CPU on a small VM (shared/reference/perf-building-blocks.md), so
sources never wake once per frame: they sleep a tick, then drain everything that arrived.
python-can is the boundary (any interface by name); inside, frames are plain tuples.
"""

from __future__ import annotations

import asyncio
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import can
import structlog

from agent.can.logs import LogFrame, LogProblem, read_log
from agent.model import Frame

log = structlog.get_logger()

DEFAULT_TICK_S = 0.05  # 50 ms: a wake-up costs ~250 µs of CPU on a small VM; 400 frames a drain at 8,000 frames/s
MAX_DRAIN = 20000


def socketcan_available(channel: str) -> bool:
    """True when this kernel has SocketCAN and the interface exists (e.g. after `ip link add vcan0 type vcan`)."""
    if not hasattr(socket, "AF_CAN") or not Path(f"/sys/class/net/{channel}").exists():
        return False
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except OSError:
        return False
    return True


def resolve_interface(interface: str, channel: str) -> str:
    """'auto' means socketcan when the channel exists here, else python-can's virtual bus."""
    if interface != "auto":
        return interface
    return "socketcan" if socketcan_available(channel) else "virtual"


class FrameSource(ABC):
    """Frames of one bus, handed over in lists."""

    def __init__(self, bus: str) -> None:
        self.bus = bus
        self.state = "starting"
        self.last_error: str | None = None

    @abstractmethod
    def frames(self, stop: asyncio.Event) -> AsyncIterator[list[Frame]]:
        """Lists of frames until `stop` is set or the source ends (a replay's end of file)."""

    def close(self) -> None:
        """Release the bus; never raises."""

    def set_wanted_ids(self, ids: set[int] | None) -> None:
        """The frame ids the collection config wants (None: all). Sources that can filter in the
        kernel or hardware (SocketCAN) install a receive filter; others ignore it."""

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "last_error": self.last_error}


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _to_frame(msg: can.Message) -> Frame:
    return Frame(msg.timestamp, msg.arbitration_id, bytes(msg.data), msg.is_fd, msg.is_error_frame)


class BusSource(FrameSource):
    """A live bus through python-can (socketcan, virtual, pcan, kvaser, ...), reopened with backoff."""

    def __init__(self, bus: str, interface: str, channel: str, *, tick_s: float = DEFAULT_TICK_S,
                 **kwargs: Any) -> None:
        super().__init__(bus)
        self.interface = interface
        self.channel = channel
        self.kwargs = kwargs
        self.tick_s = tick_s
        self.can_bus: can.BusABC | None = None
        self.reopen_max_s = 30.0

    def _open(self) -> can.BusABC:
        kwargs = {k: v for k, v in self.kwargs.items() if v is not None}
        if self.interface == "virtual":
            kwargs.pop("bitrate", None)
            kwargs.pop("data_bitrate", None)
            kwargs.setdefault("receive_own_messages", False)
        return can.Bus(interface=self.interface, channel=self.channel, **kwargs)

    def _drain(self, bus: can.BusABC) -> list[Frame]:
        out: list[Frame] = []
        recv = bus.recv
        while len(out) < MAX_DRAIN:
            msg = recv(0)
            if msg is None:
                break
            if not msg.is_remote_frame:
                out.append(_to_frame(msg))
        return out

    async def frames(self, stop: asyncio.Event) -> AsyncIterator[list[Frame]]:
        failures = 0
        while not stop.is_set():
            if self.can_bus is None:
                try:
                    self.can_bus = self._open()
                    self.state, self.last_error, failures = "up", None, 0
                    log.info("bus_open", bus=self.bus, interface=self.interface, channel=self.channel)
                except (can.CanError, OSError, ValueError, ImportError) as exc:
                    failures += 1
                    self.state, self.last_error = "down", str(exc)
                    delay = min(self.reopen_max_s, 0.5 * 2 ** min(failures, 8))
                    log.warning("bus_open_failed", bus=self.bus, interface=self.interface, channel=self.channel,
                                error=str(exc), retry_in_s=delay)
                    await sleep_or_stop(stop, delay)
                    continue
            await asyncio.sleep(self.tick_s)  # cheaper than a wait on `stop` every tick; checked above
            try:
                batch = self._drain(self.can_bus)
            except (can.CanError, OSError) as exc:
                self.state, self.last_error = "down", str(exc)
                log.warning("bus_read_failed", bus=self.bus, channel=self.channel, error=str(exc))
                self.close()
                continue
            if batch:
                yield batch

    def close(self) -> None:
        if self.can_bus is not None:
            try:
                self.can_bus.shutdown()
            except Exception as exc:  # a dying interface may fail to shut down; nothing to keep
                log.debug("bus_shutdown_failed", bus=self.bus, error=str(exc))
            self.can_bus = None


class ReplaySource(FrameSource):
    """Frames from a log file, as fast as possible (rate 0) or paced (1.0 = real time)."""

    def __init__(self, bus: str, path: str | Path, *, rate: float = 0.0, chunk: int = 2000) -> None:
        super().__init__(bus)
        self.path = Path(path)
        self.rate = rate
        self.chunk = chunk
        self.problems = 0

    async def frames(self, stop: asyncio.Event) -> AsyncIterator[list[Frame]]:
        self.state = "replaying"
        out: list[Frame] = []
        start_wall = time.monotonic()
        start_log: float | None = None
        for item in read_log(self.path):
            if stop.is_set():
                break
            if isinstance(item, LogProblem):
                self.problems += 1
                log.warning("replay_bad_line", bus=self.bus, file=str(self.path), line=item.line, reason=item.reason)
                continue
            assert isinstance(item, LogFrame)
            if item.is_remote:
                continue
            out.append(Frame(item.t, item.id, item.data, item.is_fd, item.is_error))
            if self.rate > 0:
                if start_log is None:
                    start_log = item.t
                due = (item.t - start_log) / self.rate - (time.monotonic() - start_wall)
                if due > DEFAULT_TICK_S:
                    yield out
                    out = []
                    await sleep_or_stop(stop, due)
            elif len(out) >= self.chunk:
                yield out
                out = []
                await asyncio.sleep(0)
        if out:
            yield out
        self.state = "finished"


def bus_kwargs(bitrate: int | None, data_bitrate: int | None, fd: bool, options: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(options)
    if bitrate:
        kwargs["bitrate"] = bitrate
    if data_bitrate:
        kwargs["data_bitrate"] = data_bitrate
    if fd:
        kwargs["fd"] = True
    return kwargs
