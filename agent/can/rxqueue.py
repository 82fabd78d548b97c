"""The receive queue in front of a bus: as large as the kernel grants, drained often enough, drops counted.

Sources drain on a tick (agent/can/source.py), so between two drains the bus's frames wait in a
queue. For a python-can interface on a socket (`udp_multicast`, `socketcan`) that queue is the
kernel's: at its default 212,992 bytes a UDP socket holds 256 frames (the kernel charges ~830
bytes a datagram), 32 ms of a saturated 1 Mbit/s bus (8,000 frames/s), and a 50 ms tick lost a
third of such a bus. So the socket asks for 4 MiB (SO_RCVBUFFORCE as root, else SO_RCVBUF up to
net.core.rmem_max), the tick is sized from what was granted and the bus's rate, then adapted to
how full the queue was at each drain; and the kernel's own drop counter (SO_MEMINFO's
`SK_MEMINFO_DROPS`, one getsockopt a drain, python-can's receive path untouched) counts whatever
is still lost. python-can's `virtual` bus queues in-process without bound: its backlog is capped
at one drain's worth, the oldest surplus dropped and counted.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
from typing import Any

import can
import structlog

log = structlog.get_logger()

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux 4.6+: u32 sk_meminfo[SK_MEMINFO_VARS]
MEMINFO = struct.Struct("=9I")  # rmem_alloc, rcvbuf, wmem_alloc, sndbuf, fwd_alloc, wmem_queued, optmem, backlog, drops
RCVBUF_BYTES = 4 * 1024 * 1024  # ~0.5 s of a saturated 1 Mbit/s bus at the kernel's ~500-830 B/frame accounting
BITS_PER_FRAME = 125  # an 8-byte standard frame with stuffing and spacing: 8,000 frames/s at 1 Mbit/s
FULL_RATE = 8000.0  # frames/s assumed where the bitrate is unknown (a saturated 1 Mbit/s bus)
ASSUMED_FRAME_BYTES = 1024  # what the kernel charges a queued frame, before a drain has measured it
TARGET_FILL = 0.25  # a drain should find the queue at most a quarter full: room for a stalled loop
MIN_TICK_S = 0.005  # below this a wake-up costs more than the frames it drains
MAX_TICK_S = 0.1  # the cheapest tick measured at 8,000 frames/s (docs/performance.md)


def size_receive_buffer(sock: socket.socket, bus: str, channel: str) -> int:
    """Ask for RCVBUF_BYTES (beyond net.core.rmem_max only with CAP_NET_ADMIN: SO_RCVBUFFORCE) and
    return what the kernel granted, as it reports it (twice the size asked, for its bookkeeping)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if size < RCVBUF_BYTES:
        log.warning("can_rcvbuf_small", bus=bus, channel=channel, rcvbuf_bytes=size, wanted=RCVBUF_BYTES,
                    hint="raise net.core.rmem_max (sysctl) or grant CAP_NET_ADMIN, or bursts may be dropped")
    return size


def bus_rate(bitrate: int | None) -> float:
    """Frames a second of the bus at saturation: what its receive queue must absorb between drains."""
    return bitrate / BITS_PER_FRAME if bitrate else FULL_RATE


def first_tick(rcvbuf_bytes: int, rate: float) -> float:
    """A tick at which a saturated bus fills TARGET_FILL of the granted buffer."""
    capacity = rcvbuf_bytes / ASSUMED_FRAME_BYTES
    return min(MAX_TICK_S, max(MIN_TICK_S, capacity * TARGET_FILL / rate))


def next_tick(tick: float, fill: float, longest: float) -> float:
    """The tick after a drain that found the queue `fill` full (0..1): shorter in proportion when
    above TARGET_FILL, back up slowly (to `longest`) when the bus is quiet."""
    if fill > TARGET_FILL:
        return max(MIN_TICK_S, tick * TARGET_FILL / fill)
    if fill < TARGET_FILL / 4 and tick < longest:
        return min(longest, tick * 1.25)
    return tick


class SocketQueue:
    """The kernel receive queue of a python-can bus's socket, through a duplicate of its descriptor
    (options and counters are the socket's, shared by both descriptors)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rcvbuf_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @classmethod
    def of(cls, bus: can.BusABC) -> SocketQueue | None:
        """The queue of a bus whose `fileno()` is a socket with SO_MEMINFO; None for any other
        (serial adapters, vendor drivers, the virtual bus)."""
        try:
            fd = bus.fileno()
        except (NotImplementedError, AttributeError, OSError, can.CanError):  # serial/slcan raise CanOperationError
            return None
        if not isinstance(fd, int) or fd < 0:
            return None
        dup = os.dup(fd)
        try:
            sock = socket.socket(fileno=dup)
        except OSError:  # not a socket
            os.close(dup)
            return None
        try:
            sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size)
        except OSError:  # a kernel before 4.6: no way to see its drops
            sock.close()
            return None
        return cls(sock)

    def enlarge(self, bus: str, channel: str) -> int:
        self.rcvbuf_bytes = size_receive_buffer(self.sock, bus, channel)
        return self.rcvbuf_bytes

    def fill_and_drops(self) -> tuple[float, int]:
        """How full the queue is (0..1) and the socket's cumulative drop counter."""
        info = MEMINFO.unpack(self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size))
        return info[0] / max(info[1], 1), info[8]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def in_process_queue(bus: can.BusABC) -> queue.Queue[Any] | None:
    """python-can's virtual bus keeps received messages in an unbounded `queue.Queue`."""
    q = getattr(bus, "queue", None)
    return q if isinstance(q, queue.Queue) else None


def trim_backlog(q: queue.Queue[Any], keep: int) -> int:
    """Drop the oldest messages beyond `keep`; how many were dropped."""
    dropped = 0
    while q.qsize() > keep:
        try:
            q.get_nowait()
        except queue.Empty:
            break
        dropped += 1
    return dropped
