"""Frame sources: an async iterator of frame lists per bus, drained on a short tick.

A wake-up costs ~250 µs of CPU on a small VM (measured: docs/performance.md), so
sources never wake once per frame: they sleep a tick, then drain everything that arrived.
python-can is the boundary (any interface by name); inside, frames are plain tuples.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import can
import structlog

from agent.can.logformats import LogFrame, LogProblem, read_log
from agent.can.rxqueue import SocketQueue, bus_rate, first_tick, in_process_queue, next_tick, trim_backlog
from agent.liveness import backoff_delay, beat, pause
from agent.model import TIME_MAX, TIME_MIN, Frame

log = structlog.get_logger()

DEFAULT_TICK_S = 0.05  # 50 ms: a wake-up costs ~250 µs of CPU on a small VM; 400 frames a drain at 8,000 frames/s
WATCHED_TICK_S = 0.1  # where the receive queue is sized and watched (rxqueue.py): 800 frames at 8,000 frames/s
MAX_DRAIN = 20000  # also the virtual bus's backlog bound (agent/can/rxqueue.py)
LOST_LOG_S = 10.0  # at most one `can_frames_lost` line per bus this often
MISSING_POLL_S = 1.0  # a missing interface is looked for this often (a stat of /sys/class/net/<name>)
REOPEN_INITIAL_S = 1.0  # a bus that fails to open is retried after 1, 2, 4, ... s, up to the source's reopen_max_s


def socketcan_available(channel: str) -> bool:
    """True when this kernel has SocketCAN and the interface exists (e.g. after `ip link add vcan0 type vcan`)."""
    if not hasattr(socket, "AF_CAN") or not Path(f"/sys/class/net/{channel}").exists():
        return False
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except OSError:
        return False
    return True


def channel_missing(channel: str) -> bool:
    """No network interface of this name here (a SocketCAN channel not yet created, or unplugged)."""
    return not Path(f"/sys/class/net/{channel}").exists()


# Sinks whose data stay on this machine: only toward these does `interface: auto` fall back to the
# simulator on its own (the quick start). Toward the cloud, simulated data must be asked for.
LOCAL_SINKS = frozenset({"file"})


class SourceChoice(NamedTuple):
    """How a live bus is read: the python-can interface, and whether the built-in simulator feeds it."""

    interface: str
    simulate: bool
    reason: str  # why, for the start-up log


def choose_source(interface: str, channel: str, simulate: bool | None, sink_type: str) -> SourceChoice:
    """The interface of a bus, and whether it is simulated.

    `simulate: true` always simulates (on the virtual bus); `interface: auto` reads SocketCAN when
    the channel exists. A missing channel falls back to the simulator only toward a local sink and
    only when `simulate` is unset; toward a cloud sink it stays SocketCAN and waits for the
    interface to appear, so a fleet never receives simulated data it did not ask for.
    """
    if simulate:
        return SourceChoice("virtual", True, "simulate: true")
    if interface != "auto":
        return SourceChoice(interface, False, f"interface: {interface}")
    if socketcan_available(channel):
        return SourceChoice("socketcan", False, f"interface auto: {channel} exists")
    if simulate is None and sink_type in LOCAL_SINKS:
        return SourceChoice("virtual", True, f"interface auto: {channel} does not exist here and the sink is "
                                             f"{sink_type} (local)")
    return SourceChoice("socketcan", False, f"interface auto: waiting for {channel}")


def simulation_target_problem(interface: str, channel: str) -> str | None:
    """Why `vehicle-agent simulate` cannot send to this SocketCAN channel (None: it can, or the interface
    is not SocketCAN). An in-process virtual bus would reach no other process, so it is never a fallback."""
    if interface not in ("auto", "socketcan") or socketcan_available(channel):
        return None
    why = (f"SocketCAN channel {channel} does not exist on this machine" if channel_missing(channel)
           else f"this kernel has no SocketCAN (or {channel} is not a CAN interface)")
    return (f"{why}: create it (sudo ip link add dev {channel} type vcan && sudo ip link set up {channel}; "
            "docs/vcan.md), or pass --interface virtual for python-can's in-process bus (no other process sees "
            "its frames)")


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

    def note_missing(self, channel: str) -> bool:
        """After a failed open: if the interface does not exist, state `missing` (warned once per
        absence) and True, so the caller polls for it every MISSING_POLL_S instead of backing off."""
        if not channel_missing(channel):
            return False
        if self.state != "missing":
            log.warning("can_interface_missing", bus=self.bus, channel=channel,
                        action=f"waiting for {channel} to appear (checked every {MISSING_POLL_S:.0f} s); "
                               "nothing is simulated on this bus")
        self.state, self.last_error = "missing", f"interface {channel} does not exist"
        return True


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """A reopen backoff or replay pacing: a wait that counts as progress for the supervisor."""
    await pause(stop, seconds)


def _to_frame(msg: can.Message) -> Frame:
    return Frame(msg.timestamp, msg.arbitration_id, bytes(msg.data), msg.is_fd, msg.is_error_frame)


class BusSource(FrameSource):
    """A live bus through python-can (socketcan, virtual, pcan, kvaser, ...), reopened with backoff.

    Where the interface reads a socket (udp_multicast, socketcan) the socket's receive buffer is
    enlarged and the tick follows how full it is at each drain; what is lost anyway is counted
    (agent/can/rxqueue.py): the kernel's drops, and the virtual bus's backlog beyond one drain.
    """

    def __init__(self, bus: str, interface: str, channel: str, *, tick_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(bus)
        self.interface = interface
        self.channel = channel
        self.kwargs = kwargs
        self.rate = bus_rate(kwargs.get("bitrate"))
        self.tick_given = tick_s
        self.longest_tick_s = self.tick_s = tick_s if tick_s is not None else DEFAULT_TICK_S
        self.can_bus: can.BusABC | None = None
        self.rx: SocketQueue | None = None
        self.backlog: queue.Queue[Any] | None = None
        self.rcvbuf_bytes: int | None = None
        self.kernel_drops = 0  # over every socket this source opened
        self.backlog_drops = 0
        self.unreadable_frames = 0  # messages the interface received but could not parse
        self._unreadable_log_t = float("-inf")
        self._drops_base = 0  # the drops of the sockets closed before this one
        self._lost_logged, self._lost_log_t = 0, float("-inf")
        self.reopen_max_s = 30.0

    def _open(self) -> can.BusABC:
        kwargs = {k: v for k, v in self.kwargs.items() if v is not None}
        if self.interface == "virtual":
            kwargs.pop("bitrate", None)
            kwargs.pop("data_bitrate", None)
            kwargs.setdefault("receive_own_messages", False)
        return can.Bus(interface=self.interface, channel=self.channel, **kwargs)

    def _watch(self, bus: can.BusABC) -> None:
        """Size the receive queue of a freshly opened bus, and the tick to it."""
        self.rx, self.backlog = SocketQueue.of(bus), in_process_queue(bus)
        self._drops_base = self.kernel_drops
        if self.rx is not None or self.backlog is not None:  # a queue the source sizes or bounds: the longer tick
            self.longest_tick_s = self.tick_s = self.tick_given if self.tick_given is not None else WATCHED_TICK_S
        if self.rx is not None:
            try:
                self.rcvbuf_bytes = self.rx.enlarge(self.bus, self.channel)
            except OSError as exc:  # the interface's own buffer then
                log.warning("can_rcvbuf_failed", bus=self.bus, channel=self.channel, error=str(exc))
                self.rcvbuf_bytes = self.rx.rcvbuf_bytes
            self.tick_s = min(self.longest_tick_s, first_tick(self.rcvbuf_bytes, self.rate))

    def drain(self, bus: can.BusABC) -> list[Frame]:
        """Everything the bus has received (up to MAX_DRAIN frames), without waiting."""
        out: list[Frame] = []
        if self.backlog is not None and self.backlog.qsize() > MAX_DRAIN:
            self.backlog_drops += trim_backlog(self.backlog, MAX_DRAIN)
        recv = bus.recv
        while len(out) < MAX_DRAIN:
            try:
                msg = recv(0)
            except can.CanOperationError as exc:
                if exc.__cause__ is None or isinstance(exc.__cause__, OSError):
                    raise  # the interface failed: reopened by the caller
                self._unreadable(exc)  # one message it could not parse (e.g. a stray datagram): read past it
                continue
            if msg is None:
                break
            if not msg.is_remote_frame:
                out.append(_to_frame(msg))
        return out

    def _unreadable(self, exc: can.CanOperationError) -> None:
        """A message python-can read but could not turn into a frame: counted, logged once per LOST_LOG_S."""
        self.unreadable_frames += 1
        now = time.monotonic()
        if now - self._unreadable_log_t >= LOST_LOG_S:
            self._unreadable_log_t = now
            log.warning("can_message_unreadable", bus=self.bus, interface=self.interface, channel=self.channel,
                        error=f"{exc}: {type(exc.__cause__).__name__}: {exc.__cause__}",
                        unreadable_frames=self.unreadable_frames)

    def _measure(self) -> None:
        """Before a drain: the socket's fill sets the next tick, its drop counter the kernel's drops."""
        if self.rx is None:
            return
        fill, drops = self.rx.fill_and_drops()
        self.kernel_drops = self._drops_base + drops
        self.tick_s = next_tick(self.tick_s, fill, self.longest_tick_s)

    @property
    def lost_frames(self) -> int:
        return self.kernel_drops + self.backlog_drops + self.unreadable_frames

    def _note_lost(self) -> None:
        """A warning when frames were lost, at most one per ERROR_LOG_S with what was lost since the last."""
        lost = self.lost_frames
        now = time.monotonic()
        if lost == self._lost_logged or now - self._lost_log_t < LOST_LOG_S:
            return
        log.warning("can_frames_lost", bus=self.bus, interface=self.interface, channel=self.channel,
                    new=lost - self._lost_logged, lost_frames=lost, kernel_drops=self.kernel_drops,
                    backlog_drops=self.backlog_drops, unreadable_frames=self.unreadable_frames,
                    rcvbuf_bytes=self.rcvbuf_bytes,
                    tick_ms=round(self.tick_s * 1000, 1))
        self._lost_logged, self._lost_log_t = lost, now

    async def frames(self, stop: asyncio.Event) -> AsyncIterator[list[Frame]]:
        failures = 0
        while not stop.is_set():
            if self.can_bus is None:
                try:
                    self.can_bus = self._open()
                    self._watch(self.can_bus)
                    self.state, self.last_error, failures = "up", None, 0
                    log.info("bus_open", bus=self.bus, interface=self.interface, channel=self.channel,
                             rcvbuf_bytes=self.rcvbuf_bytes, tick_ms=round(self.tick_s * 1000, 1))
                except (can.CanError, OSError, ValueError, ImportError) as exc:
                    self.close()
                    if self.interface == "socketcan" and self.note_missing(self.channel):
                        await sleep_or_stop(stop, MISSING_POLL_S)
                        continue
                    failures += 1
                    self.state, self.last_error = "down", str(exc)
                    delay = backoff_delay(failures, REOPEN_INITIAL_S, self.reopen_max_s, jitter=False)
                    log.warning("bus_open_failed", bus=self.bus, interface=self.interface, channel=self.channel,
                                error=str(exc), retry_in_s=delay)
                    await sleep_or_stop(stop, delay)
                    continue
            await asyncio.sleep(self.tick_s)  # cheaper than a wait on `stop` every tick; checked above
            beat()
            try:
                self._measure()
                batch = self.drain(self.can_bus)
            except (can.CanError, OSError) as exc:
                self.state, self.last_error = "down", str(exc)
                log.warning("bus_read_failed", bus=self.bus, channel=self.channel, error=str(exc))
                self.close()
                continue
            self._note_lost()
            if batch:
                yield batch

    def status(self) -> dict[str, Any]:
        return {**super().status(), "lost_frames": self.lost_frames, "kernel_drops": self.kernel_drops,
                "backlog_drops": self.backlog_drops, "unreadable_frames": self.unreadable_frames,
                "rcvbuf_bytes": self.rcvbuf_bytes,
                "tick_ms": round(self.tick_s * 1000, 1),
                "loss_seen": "socket drop counter" if self.rx is not None else
                             "backlog bound" if self.backlog is not None else "not visible on this interface"}

    def close(self) -> None:
        if self.rx is not None:
            self.rx.close()
            self.rx = None
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

    def status(self) -> dict[str, Any]:
        return {**super().status(), "bad_lines": self.problems}

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
            if self.rate > 0 and TIME_MIN <= item.t <= TIME_MAX:  # a damaged line's time must not stall the replay
                if start_log is None:
                    start_log = item.t
                due = (item.t - start_log) / self.rate - (time.monotonic() - start_wall)
                if due > DEFAULT_TICK_S:
                    yield out
                    out = []
                    await sleep_or_stop(stop, due)
                    continue
            # as fast as possible, or a paced replay behind its schedule (a busier log than the CPU can
            # take): chunks, not a list that grew with everything read since the last sleep
            if len(out) >= self.chunk:
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
