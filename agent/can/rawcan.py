"""SocketCAN without python-can in the hot path: a raw CAN socket drained in batches.

python-can's `Bus.recv` costs several µs a frame on the SocketCAN path (select, a `can.Message`,
filter checks); a non-blocking drain of the socket into plain tuples costs less than 2 µs (the bench's
`with_bus_read`, docs/performance.md). This source does that drain on a short tick, and uses
what only SocketCAN offers: kernel receive filters built from the collection config, CAN FD
frames, error frames (bus-off, error passive) and the kernel's receive-queue drop counter
(SO_RXQ_OVFL), with kernel receive timestamps (SO_TIMESTAMPNS).

`drain` works on any datagram socket carrying `struct can_frame` / `struct canfd_frame`, so the
benchmark can measure it on an AF_UNIX socketpair where the kernel has no CAN.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from agent.can.bus_health import BUS_OFF, BusHealth
from agent.can.frame_format import (
    CAN_EFF_FLAG,
    CAN_EFF_MASK,
    CAN_ERR_FLAG,
    CAN_MTU,
    CAN_RTR_FLAG,
    CAN_SFF_MASK,
    CANFD_MTU,
    FRAME_HEADER,
)
from agent.can.mmsg import CTRL_BYTES, MultiReceiver
from agent.can.rxqueue import RCVBUF_BYTES, size_receive_buffer
from agent.can.source import MAX_DRAIN, MISSING_POLL_S, REOPEN_INITIAL_S, FrameSource, sleep_or_stop
from agent.liveness import backoff_delay, beat
from agent.model import Frame

log = structlog.get_logger()

SOL_CAN_RAW = getattr(socket, "SOL_CAN_RAW", 101)
CAN_RAW_FILTER = getattr(socket, "CAN_RAW_FILTER", 1)
CAN_RAW_ERR_FILTER = 2
CAN_RAW_FD_FRAMES = getattr(socket, "CAN_RAW_FD_FRAMES", 5)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # SO_TIMESTAMPNS_OLD: a timespec of C longs
SO_TIMESTAMPNS_NEW = 64  # Linux 5.1+: always two 64-bit fields, also for 32-bit processes
TIMESTAMP_KINDS = frozenset((SO_TIMESTAMPNS, SO_TIMESTAMPNS_NEW))
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
CAN_RAW_FILTER_MAX = 512
TIMESPEC = struct.Struct("=qq")
TIMESPEC32 = struct.Struct("=ii")  # SO_TIMESTAMPNS_OLD in a 32-bit process
U32 = struct.Struct("=I")
ANC_SIZE = socket.CMSG_SPACE(TIMESPEC.size) + socket.CMSG_SPACE(U32.size)
# Between drains, with the 4 MiB buffer: 800 frames of a saturated bus, a tenth of what it holds. Each
# wake-up costs more than its share here (a cold cache after the sleep): at 8,000 frames/s the agent
# used 4.4 % of a core on a 50 ms tick, 3.2 % on 100 ms, 3.3 % on 200 ms (docs/performance.md).
RAW_TICK_S = 0.1
SMALL_BUFFER_TICK_S = 0.02  # ~160 frames of a saturated bus between drains: a third of a default buffer
ERROR_LOG_S = 10.0


class DrainState:
    """What a drain learned besides frames: the kernel's cumulative drop counter, error frames seen."""

    __slots__ = ("kernel_drops", "error_frames")

    def __init__(self) -> None:
        self.kernel_drops = 0
        self.error_frames = 0  # since the source last looked (it resets this)


def enable_timestamps(sock: socket.socket) -> None:
    """Kernel receive timestamps: the 64-bit form where the kernel has it, else the old one."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS_NEW, 1)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def _seconds(cdata: bytes | memoryview) -> float | None:
    """A timestamp control message's time; None for a size no kernel writes (a truncated one)."""
    if len(cdata) == TIMESPEC.size:
        sec, ns = TIMESPEC.unpack_from(cdata)
    elif len(cdata) == TIMESPEC32.size:
        sec, ns = TIMESPEC32.unpack_from(cdata)
    else:
        return None
    return sec + ns * 1e-9


def _frame(data: bytes, t: float, state: DrainState) -> Frame | None:
    """A received `can_frame`/`canfd_frame` as a Frame tuple; None for remote frames."""
    can_id, length = FRAME_HEADER.unpack_from(data)
    if can_id & CAN_RTR_FLAG:
        return None
    if can_id & CAN_ERR_FLAG:
        state.error_frames += 1
        return (t, can_id & CAN_EFF_MASK, data[8:16], False, True)  # type: ignore[return-value]
    fid = can_id & (CAN_EFF_MASK if can_id & CAN_EFF_FLAG else CAN_SFF_MASK)
    # a plain tuple in Frame's field order: building the NamedTuple would cost more than the unpack
    return (t, fid, data[8:8 + length], len(data) == CANFD_MTU, False)  # type: ignore[return-value]


def drain(sock: socket.socket, out: list[Frame], state: DrainState, limit: int = MAX_DRAIN) -> None:
    """Append every frame waiting on a non-blocking CAN socket to `out` (up to `limit`), one
    `recvmsg` each. Remote frames are skipped; error frames come out with `is_error`."""
    recvmsg, now, append = sock.recvmsg, time.time, out.append
    while len(out) < limit:
        try:
            data, anc, _flags, _addr = recvmsg(CANFD_MTU, ANC_SIZE)
        except BlockingIOError:
            return
        t = None
        for _level, kind, cdata in anc:
            if kind in TIMESTAMP_KINDS:
                t = _seconds(cdata)
            elif kind == SO_RXQ_OVFL:
                state.kernel_drops = U32.unpack_from(cdata)[0]
        if len(data) < CAN_MTU:  # not a CAN frame (a closed stand-in socket's empty datagram)
            return
        frame = _frame(data, t or now(), state)
        if frame is not None:
            append(frame)


_CMSG_TYPE_AT = socket.CMSG_LEN(0) - 4  # cmsghdr: cmsg_len (size_t), cmsg_level (int), cmsg_type (int)
_CMSG_HEADER = socket.CMSG_LEN(0)
_TS_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
_ALIGN = socket.CMSG_SPACE(1) - socket.CMSG_LEN(0) - 1  # CMSG_ALIGN's alignment minus one
I32 = struct.Struct("=i")


def _walk_cmsgs(ctrl: memoryview, c: int, clen: int, size_t: struct.Struct, state: DrainState) -> float | None:
    """The timestamp (and the drop counter, into `state`) from one message's control data, walked as
    CMSG_NXTHDR does: for the layouts the fast path of `drain_multi` does not expect."""
    t, off = None, 0
    while off + _CMSG_HEADER <= clen:
        length = size_t.unpack_from(ctrl, c + off)[0]
        if length < _CMSG_HEADER:
            break
        kind = I32.unpack_from(ctrl, c + off + _CMSG_TYPE_AT)[0]
        if kind in TIMESTAMP_KINDS:
            t = _seconds(ctrl[c + off + _CMSG_HEADER:c + off + length])
        elif kind == SO_RXQ_OVFL:
            state.kernel_drops = U32.unpack_from(ctrl, c + off + _CMSG_HEADER)[0]
        off += (length + _ALIGN) & ~_ALIGN
    return t


def drain_multi(sock: socket.socket, rx: MultiReceiver, out: list[Frame], state: DrainState,
                limit: int = MAX_DRAIN) -> None:
    """`drain` with recvmmsg: up to `rx.count` frames per system call (same frames, same order).

    The buffers are read with `struct.iter_unpack` (C loops): per message its lengths, its control
    data in the usual layout (a 64-bit timestamp, then the drop counter once the socket has dropped),
    and its frame header and payload; anything else takes `_walk_cmsgs` and `_frame`.
    """
    fd, now, append = sock.fileno(), time.time, out.append
    ts_only, ts_drops, kinds = _TS_SPACE, _TS_SPACE + socket.CMSG_SPACE(U32.size), TIMESTAMP_KINDS
    special = CAN_RTR_FLAG | CAN_ERR_FLAG
    while len(out) < limit:
        n = rx.receive(fd)
        if not n:
            return
        heads = rx.heads.iter_unpack(rx.msgs_view[:n * rx.stride])
        ctrls = rx.cmsgs.iter_unpack(rx.ctrl_view[:n * CTRL_BYTES])
        frames = rx.frames.iter_unpack(rx.data_view[:n * rx.mtu])
        for i, ((clen, size), (_l1, _v1, kind, sec, ns, _l2, _v2, kind2, drops), (can_id, length, payload)) in \
                enumerate(zip(heads, ctrls, frames, strict=True)):
            if size < CAN_MTU:
                return
            if clen == ts_only and kind in kinds:
                t = sec + ns * 1e-9
            elif clen == ts_drops and kind in kinds and kind2 == SO_RXQ_OVFL:
                t, state.kernel_drops = sec + ns * 1e-9, drops
            else:
                t = _walk_cmsgs(rx.ctrl_view, i * CTRL_BYTES, clen, rx.size_t, state) or now()
            if can_id & special:
                frame = _frame(bytes(rx.data_view[i * rx.mtu:i * rx.mtu + size]), t, state)
                if frame is not None:
                    append(frame)
                continue
            fid = can_id & (CAN_EFF_MASK if can_id & CAN_EFF_FLAG else CAN_SFF_MASK)
            append((t, fid, payload[:length], size == CANFD_MTU, False))  # type: ignore[arg-type]
        if n < rx.count:
            return


def receive_filters(ids: set[int] | None) -> bytes | None:
    """CAN_RAW_FILTER entries that pass exactly `ids` (None: no filter; empty: pass nothing)."""
    if ids is None or len(ids) > CAN_RAW_FILTER_MAX:
        return None
    entries = []
    for fid in sorted(ids):
        if fid > CAN_SFF_MASK:
            entries.append(struct.pack("=II", fid | CAN_EFF_FLAG, CAN_EFF_MASK | CAN_EFF_FLAG | CAN_RTR_FLAG))
        else:
            entries.append(struct.pack("=II", fid, CAN_SFF_MASK | CAN_EFF_FLAG | CAN_RTR_FLAG))
    return b"".join(entries)


def interface_up(channel: str) -> bool:
    """IFF_UP of a network interface (False when it does not exist)."""
    try:
        return bool(int(Path(f"/sys/class/net/{channel}/flags").read_text(), 16) & 0x1)
    except (OSError, ValueError):
        return False


class RawCanSource(FrameSource):
    """A SocketCAN interface read with a raw socket, drained on a tick, reopened with backoff."""

    def __init__(self, bus: str, channel: str, *, fd: bool = False, tick_s: float = RAW_TICK_S,
                 sock: socket.socket | None = None) -> None:
        super().__init__(bus)
        self.channel = channel
        self.fd = fd
        self.tick_s = tick_s
        self.sock = sock
        self._given = sock is not None  # a socket handed in (tests, benchmark): never reopened
        self.wanted: set[int] | None = None
        self.drain_state = DrainState()
        self.kernel_drops = 0
        self.health = BusHealth()
        self._errors_logged = self._state_logged = float("-inf")  # rate limits of the error log lines
        self._deferred: OSError | None = None  # a socket error met after some frames of a drain
        self.rcvbuf_bytes = 0
        self.reopen_max_s = 30.0
        self._multi = MultiReceiver.create()  # None: one recvmsg per frame
        if sock is not None:
            sock.setblocking(False)

    def _open(self) -> socket.socket:
        if not interface_up(self.channel):
            raise OSError(errno.ENETDOWN, f"interface {self.channel} is down or does not exist")
        sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        try:
            self.rcvbuf_bytes = size_receive_buffer(sock, self.bus, self.channel)
            if self.rcvbuf_bytes < RCVBUF_BYTES:  # a default-sized buffer holds ~500 frames: drain more often
                self.tick_s = min(self.tick_s, SMALL_BUFFER_TICK_S)
            enable_timestamps(sock)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            if self.fd:
                sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1)
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, CAN_EFF_MASK)  # every error class
            self._apply_filter(sock)
            sock.bind((self.channel,))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _apply_filter(self, sock: socket.socket) -> None:
        filters = receive_filters(self.wanted)
        if filters is None:  # the default filter: everything
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, struct.pack("=II", 0, 0))
        else:
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, filters)

    def filter_ids(self) -> int | None:
        """How many ids the kernel filter passes (None: no filter, every frame; status `filter_ids`)."""
        return None if self.wanted is None or len(self.wanted) > CAN_RAW_FILTER_MAX else len(self.wanted)

    def set_wanted_ids(self, ids: set[int] | None) -> None:
        self.wanted = None if ids is None else set(ids)
        if self.sock is not None and not self._given:
            try:
                self._apply_filter(self.sock)
                log.info("can_filter_set", bus=self.bus, channel=self.channel,
                         ids=None if self.wanted is None else len(self.wanted))
            except OSError as exc:
                log.warning("can_filter_failed", bus=self.bus, channel=self.channel, error=str(exc))

    def read(self) -> list[Frame]:
        """One drain of what the socket holds (the benchmark calls this directly).

        A socket error part-way through a drain (the interface went down) is raised on the next
        call, after the frames already read are handed over: they are counted and collected.
        """
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc
        out: list[Frame] = []
        assert self.sock is not None
        try:
            if self._multi is not None:
                drain_multi(self.sock, self._multi, out, self.drain_state)
            else:
                drain(self.sock, out, self.drain_state)
        except OSError as exc:
            if not out:
                raise
            self._deferred = exc
        return out

    async def frames(self, stop: asyncio.Event) -> AsyncIterator[list[Frame]]:
        failures = 0
        checked = time.monotonic()
        while not stop.is_set():
            if self.sock is None:
                try:
                    self.sock = self._open()
                    self.state, self.last_error, failures = "up", None, 0
                    self.health.restarted()  # a fresh open starts the controller afresh
                    log.info("bus_open", bus=self.bus, interface="socketcan", channel=self.channel, raw=True,
                             filter_ids=None if self.wanted is None else len(self.wanted))
                except OSError as exc:
                    if self.note_missing(self.channel):
                        await sleep_or_stop(stop, MISSING_POLL_S)
                        continue
                    failures += 1
                    self.state, self.last_error = "down", str(exc)
                    delay = backoff_delay(failures, REOPEN_INITIAL_S, self.reopen_max_s, jitter=False)
                    log.warning("bus_open_failed", bus=self.bus, channel=self.channel, error=str(exc),
                                retry_in_s=delay)
                    await sleep_or_stop(stop, delay)
                    continue
            await asyncio.sleep(self.tick_s)  # cheaper than a wait on `stop` every tick; checked above
            beat()
            try:
                batch = self.read()
            except OSError as exc:
                self._down(exc)
                if self._given:
                    return
                continue
            self._note(batch)
            if batch:
                yield batch
            if not self._given and time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                if not interface_up(self.channel):
                    self._down(OSError(errno.ENETDOWN, f"interface {self.channel} went down"))

    def _down(self, exc: OSError) -> None:
        self.state, self.last_error = "down", str(exc)
        log.warning("bus_read_failed", bus=self.bus, channel=self.channel, error=str(exc))
        self.close()

    def _note(self, batch: list[Frame]) -> None:
        """Kernel drops and error frames from the drain, into status and the log."""
        st = self.drain_state
        if st.kernel_drops != self.kernel_drops:
            log.warning("can_kernel_drops", bus=self.bus, channel=self.channel, dropped=st.kernel_drops,
                        new=st.kernel_drops - self.kernel_drops)
            self.kernel_drops = st.kernel_drops
        if not st.error_frames:
            return
        st.error_frames = 0
        health = self.health
        before = health.controller
        for _t, error_class, data, _fd, is_error in batch:
            if is_error:
                health.note(error_class, data)
        now = time.monotonic()
        if health.controller != before:
            self.state = "bus_off" if health.controller == BUS_OFF else "up"
            # a controller hovering around a limit flips state every drain: one line per 10 s, except bus-off
            if BUS_OFF in (before, health.controller) or now - self._state_logged >= ERROR_LOG_S:
                self._state_logged = now
                log.warning("can_controller_state", bus=self.bus, channel=self.channel, state=health.controller,
                            tx_error_counter=health.tx_errors, rx_error_counter=health.rx_errors)
        if now - self._errors_logged >= ERROR_LOG_S:  # an error storm: one line per 10 s
            self._errors_logged = now
            log.warning("can_error_frames", bus=self.bus, channel=self.channel, errors=health.counts_seen())

    def status(self) -> dict[str, Any]:
        return {**super().status(), "lost_frames": self.kernel_drops, "kernel_drops": self.kernel_drops, "backlog_drops": 0,
                "unreadable_frames": 0, "filter_ids": self.filter_ids(),
                "rcvbuf_bytes": self.rcvbuf_bytes, "loss_seen": "socket drop counter (SO_RXQ_OVFL)",
                **self.health.as_dict()}

    def close(self) -> None:
        self._deferred = None  # the error of this socket, not of the next one
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
