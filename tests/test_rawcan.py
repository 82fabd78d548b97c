"""The raw SocketCAN reader's two drains (recvmmsg and recvmsg) on `struct can_frame` datagrams.

An AF_UNIX datagram socketpair carries the same bytes an AF_CAN socket delivers (kernel
timestamps included); tests/test_vcan.py covers the real AF_CAN socket.
"""

from __future__ import annotations

import socket
import time

import pytest

from agent.can.bus_health import CAN_ERR_BUSOFF
from agent.can.frame_format import CAN_ERR_FLAG, CAN_RTR_FLAG, pack_frame
from agent.can.mmsg import MultiReceiver
from agent.can.rawcan import (
    DrainState,
    drain,
    drain_multi,
    enable_timestamps,
    receive_filters,
)


def _pair() -> tuple[socket.socket, socket.socket]:
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    enable_timestamps(rx)
    rx.setblocking(False)
    return tx, rx


def _traffic() -> list[bytes]:
    grams = []
    for i in range(700):  # more than one recvmmsg call holds
        grams.append(pack_frame(0x100 + i % 5, bytes([i % 256]) * (i % 9)))
        if i % 50 == 0:
            grams.append(pack_frame(0x18FEF100, bytes(range(8))))                       # 29-bit
            grams.append(pack_frame(0x200, bytes(range(64)), fd=True))                   # CAN FD, 64 bytes
            grams.append(pack_frame(0x300 | CAN_RTR_FLAG, b"", extended=False))          # remote: skipped
            grams.append(pack_frame(CAN_ERR_FLAG | CAN_ERR_BUSOFF, bytes(8), extended=False))  # error frame
    return grams


@pytest.mark.parametrize("multi", [False, True], ids=["recvmsg", "recvmmsg"])
def test_drain_reads_every_frame_as_sent(multi: bool) -> None:
    rx_multi = MultiReceiver.create(count=64)
    if multi and rx_multi is None:
        pytest.skip("libc has no recvmmsg")
    tx, rx = _pair()
    grams = _traffic()
    before = time.time()
    for g in grams:
        tx.send(g)
    out: list = []
    state = DrainState()
    if multi:
        drain_multi(rx, rx_multi, out, state, limit=10_000)
    else:
        drain(rx, out, state, limit=10_000)
    after = time.time()
    remote = sum(1 for g in grams if int.from_bytes(g[:4], "little") & CAN_RTR_FLAG)
    assert len(out) == len(grams) - remote
    data = [(f[1], f[2], f[3], f[4]) for f in out]
    assert (0x104, bytes([4]) * 4, False, False) in data
    assert (0x18FEF100, bytes(range(8)), False, False) in data
    assert (0x200, bytes(range(64)), True, False) in data
    assert (CAN_ERR_BUSOFF, bytes(8), False, True) in data and state.error_frames == 14
    assert all(before - 1 <= f[0] <= after + 1 for f in out), "kernel receive timestamps"
    assert [f[0] for f in out] == sorted(f[0] for f in out)
    tx.close()
    rx.close()


def test_both_drains_agree_and_respect_the_limit() -> None:
    rx_multi = MultiReceiver.create(count=32)
    if rx_multi is None:
        pytest.skip("libc has no recvmmsg")
    tx, rx = _pair()
    grams = _traffic()
    results = []
    for use_multi in (False, True):
        for g in grams:
            tx.send(g)
        out: list = []
        if use_multi:
            drain_multi(rx, rx_multi, out, DrainState(), limit=10_000)
        else:
            drain(rx, out, DrainState(), limit=10_000)
        results.append([f[1:] for f in out])
    assert results[0] == results[1]

    for g in grams:
        tx.send(g)
    part: list = []
    drain_multi(rx, rx_multi, part, DrainState(), limit=100)
    assert 100 <= len(part) < 100 + 32, "stops after the call that reached the limit"
    rest: list = []
    drain_multi(rx, rx_multi, rest, DrainState(), limit=10_000)
    assert [f[1:] for f in part + rest] == results[0], "nothing lost between drains"


def test_receive_filters_pass_exactly_the_wanted_ids() -> None:
    assert receive_filters(None) is None
    assert receive_filters(set(range(600))) is None, "more than the kernel's 512 filters: no filter"
    raw = receive_filters({0x123, 0x18FEF100})
    assert raw is not None and len(raw) == 16
    ids = {int.from_bytes(raw[i:i + 4], "little") for i in (0, 8)}
    assert ids == {0x123, 0x18FEF100 | 0x80000000}


def _error_frame(error_class: int, status: int = 0, tx_errors: int = 0, rx_errors: int = 0) -> bytes:
    """An error frame as the kernel queues it: class bits in the id, details in the payload."""
    return pack_frame(CAN_ERR_FLAG | error_class, bytes([0, status, 0, 0, 0, 0, tx_errors, rx_errors]), extended=False)


async def test_error_frames_become_bus_health_in_status() -> None:
    """Error frames sum up to what a fleet engineer reads in status: counts per class, the controller's
    state (active, warning, passive, bus-off and back) and its error counters."""
    import asyncio

    from agent.can.bus_health import CAN_ERR_BUSOFF, CAN_ERR_CNT, CAN_ERR_CRTL, CAN_ERR_RESTARTED
    from agent.can.rawcan import RawCanSource
    from agent.status.document import BusCounts, BusStatus
    from agent.twin.reporter import reported_bus

    tx, rx = _pair()
    source = RawCanSource("pt", "test", sock=rx, tick_s=0.01)
    stop = asyncio.Event()
    received: list = []

    async def consume() -> None:
        async for frames in source.frames(stop):
            received.extend(frames)

    async def after(grams: list[bytes]) -> dict:
        want = len(received) + len(grams)
        for g in grams:
            tx.send(g)
        for _ in range(500):
            if len(received) >= want:
                return source.status()
            await asyncio.sleep(0.01)
        raise AssertionError("frames not drained")

    task = asyncio.create_task(consume())
    try:
        st = await after([pack_frame(0x100, bytes(8))])
        assert st["controller"] == "error_active" and not any(st["errors"].values()) and st["tx_error_counter"] is None
        assert set(st["errors"]) >= {"bus_off", "no_ack", "protocol"}, "every class, zeros included (twin merge patches)"
        st = await after([_error_frame(CAN_ERR_CRTL | CAN_ERR_CNT, 0x08, tx_errors=97, rx_errors=3)])
        assert (st["controller"], st["tx_error_counter"], st["rx_error_counter"]) == ("error_warning", 97, 3)
        st = await after([_error_frame(0x008 | 0x080), _error_frame(0x020), _error_frame(0x020),
                          _error_frame(CAN_ERR_CRTL | CAN_ERR_CNT, 0x20, tx_errors=130, rx_errors=5)])
        assert st["controller"] == "error_passive" and st["state"] == "up" and st["tx_error_counter"] == 130
        assert source.health.counts_seen() == {"controller": 2, "protocol": 1, "bus_error": 1, "no_ack": 2}
        st = await after([_error_frame(CAN_ERR_CRTL | CAN_ERR_CNT, 0x04, tx_errors=100, rx_errors=0)])
        assert (st["controller"], st["tx_error_counter"]) == ("error_warning", 100), "back down from passive"
        st = await after([_error_frame(CAN_ERR_BUSOFF)])
        assert st["controller"] == "bus_off" and st["state"] == "bus_off"
        st = await after([_error_frame(CAN_ERR_RESTARTED)])
        assert st["controller"] == "error_active" and st["state"] == "up"
        assert (st["tx_error_counter"], st["rx_error_counter"]) == (0, 0), "a restart starts the counters afresh"
        assert source.health.counts_seen() == {"controller": 3, "protocol": 1, "bus_error": 1, "no_ack": 2,
                                               "bus_off": 1, "restarted": 1}
        assert sum(1 for f in received if f[4]) == 8, "error frames still reach the collector, which counts them"
        reported = reported_bus(BusStatus(0.0, BusCounts(), st))  # what the twin's reported properties carry
        assert reported["controller"] == "error_active" and reported["errors"]["bus_off"] == 1
    finally:
        stop.set()
        tx.close()
        await asyncio.wait_for(task, 5)
        source.close()


def test_bus_health_of_older_kernels_and_a_reopened_interface() -> None:
    """Drivers of kernels before 6.0 fill the error counters without CAN_ERR_CNT; bringing an interface
    up again after bus-off (no error frame says so) starts the controller afresh."""
    from agent.can.bus_health import CAN_ERR_BUSOFF, CAN_ERR_CRTL, BusHealth

    health = BusHealth()
    health.note(CAN_ERR_CRTL, bytes([0, 0x10, 0, 0, 0, 0, 0, 131]))
    assert (health.controller, health.tx_errors, health.rx_errors) == ("error_passive", 0, 131)
    health.note(CAN_ERR_CRTL, bytes([0, 0x01, 0, 0, 0, 0, 0, 0]))  # an RX overflow: no state, no counters
    assert (health.controller, health.rx_errors, health.counts["controller_overflow"]) == ("error_passive", 131, 1)
    health.note(CAN_ERR_BUSOFF, bytes(8))
    assert health.controller == "bus_off"
    health.restarted()
    assert (health.controller, health.tx_errors, health.rx_errors) == ("error_active", 0, 0)
    assert health.counts_seen() == {"controller": 2, "controller_overflow": 1, "bus_off": 1}


def test_frames_read_before_a_socket_error_are_handed_over() -> None:
    """The interface goes down in the middle of a drain: the frames already read still reach the
    collector, and the error comes with the next read (then the source reopens)."""
    import errno

    from agent.can.rawcan import RawCanSource

    real = MultiReceiver.create(count=8)
    if real is None:
        pytest.skip("libc has no recvmmsg")

    class GoesDown:  # libc's recvmmsg, until the interface goes away after the first call
        def __init__(self) -> None:
            self.calls = 0

        def __getattr__(self, name: str):  # noqa: ANN204 - the buffers and layouts of the real receiver
            return getattr(real, name)

        def receive(self, fd: int) -> int:
            self.calls += 1
            if self.calls > 1:
                raise OSError(errno.ENETDOWN, "Network is down")
            return real.receive(fd)

    tx, rx = _pair()
    for i in range(20):
        tx.send(pack_frame(0x100 + i, bytes(8)))
    source = RawCanSource("pt", "test", sock=rx)
    source._multi = GoesDown()  # noqa: SLF001
    got = source.read()
    assert [f[1] for f in got] == [0x100 + i for i in range(8)], "the first call's frames are not lost"
    with pytest.raises(OSError, match="Network is down"):
        source.read()
    tx.close()
    source.close()
