"""The raw SocketCAN reader's two drains (recvmmsg and recvmsg) on `struct can_frame` datagrams.

An AF_UNIX datagram socketpair carries the same bytes an AF_CAN socket delivers (kernel
timestamps included); tests/test_vcan.py covers the real AF_CAN socket.
"""

from __future__ import annotations

import socket
import time

import pytest

from agent.can.frame_format import CAN_ERR_FLAG, CAN_RTR_FLAG, pack_frame
from agent.can.mmsg import MultiReceiver
from agent.can.rawcan import (
    CAN_ERR_BUSOFF,
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
    assert (CAN_ERR_BUSOFF, bytes(8), False, True) in data and state.error_class == CAN_ERR_BUSOFF
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
