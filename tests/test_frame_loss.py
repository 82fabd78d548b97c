"""No silent frame loss on python-can interfaces (issue 19): the receive queue is enlarged, and what
is lost anyway is counted per bus, in the losses, the reported properties and `vehicle-agent status`.

The udp_multicast bus is real (python-can's own interface in a real agent process, its datagrams
sent by the test through a UDP socket as python-can packs them); loss is forced by freezing the agent
(SIGSTOP) while far more frames arrive than its socket holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import time
from pathlib import Path

import can
import cantools
import pytest
import yaml
from can.interfaces.udp_multicast.utils import pack_message

from agent.can.rxqueue import MIN_TICK_S, RCVBUF_BYTES, TARGET_FILL, next_tick
from agent.can.source import MAX_DRAIN, BusSource
from agent.status.view import typed
from agent.twin.reporter import reported_doc
from tests.conftest import CONFIG_DIR, run_cli, start_logged_agent, wait_for

DBC = CONFIG_DIR / "dbc" / "powertrain.dbc"
GROUP = "239.74.163.40"


class UdpSender:
    """python-can udp_multicast datagrams of one message id, from a plain socket (not the agent's code)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("@I", 1))
        self.sock.connect((GROUP, port))
        self.frame_id = cantools.database.load_file(str(DBC)).get_message_by_name("EngineData").frame_id
        self.sent = 0

    def send(self, count: int, pace_per_s: float = 0) -> None:
        start = time.monotonic()
        for i in range(count):
            msg = can.Message(timestamp=time.time(), arbitration_id=self.frame_id,
                              data=(self.sent + i).to_bytes(8, "little"), is_extended_id=False)
            self.sock.send(pack_message(msg))
            if pace_per_s and i % 100 == 99:
                delay = start + (i + 1) / pace_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        self.sent += count


@pytest.fixture
def udp_agent(tmp_path: Path):
    port = random.randrange(40000, 60000)
    cfg = {"vehicle_id": "car-loss", "state_dir": str(tmp_path / "state"), "sink": {"type": "file"},
           "buses": [{"name": "pt", "interface": "udp_multicast", "channel": GROUP, "options": {"port": port},
                      "databases": [str(DBC)]}],
           "collection": {"default": {"policy": "all"}}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc, lines, reader = start_logged_agent(path)
    sender = UdpSender(port)

    def status() -> dict:
        res = run_cli("status", "--config", str(path), "--json")
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def bus() -> dict:
        return status().get("buses", {}).get("pt", {})

    try:
        wait_for(lambda: bus().get("state") == "up", 60, what="the udp_multicast bus up")
        yield proc, lines, sender, status, bus, path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(30)
        reader.join(10)


def test_a_udp_multicast_bus_gets_a_large_receive_buffer_and_loses_nothing_at_its_pace(udp_agent) -> None:
    proc, lines, sender, status, bus, path = udp_agent
    up = bus()
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    asked = RCVBUF_BYTES if os.geteuid() == 0 else min(RCVBUF_BYTES, rmem_max)  # SO_RCVBUFFORCE only as root
    assert up["rcvbuf_bytes"] == 2 * asked, up  # the kernel reports twice what it grants
    assert up["loss_seen"] == "socket drop counter"
    sender.send(4000, pace_per_s=8000)
    wait_for(lambda: bus().get("frames") == 4000, 60, what="all 4,000 frames received")
    doc = status()
    assert doc["buses"]["pt"]["lost_frames"] == 0 and doc["losses"]["kernel_dropped_frames"] == 0
    assert "lost frames 0 (socket drop counter" in run_cli("status", "--config", str(path)).stdout


def test_frames_a_frozen_agent_could_not_drain_are_counted_lost(udp_agent) -> None:
    """Every frame sent is either received or counted lost: in the bus, the losses, the reported
    properties, the status text, and a `can_frames_lost` warning."""
    proc, lines, sender, status, bus, path = udp_agent
    held = bus()["rcvbuf_bytes"] // 500  # more than the socket holds: the kernel charges ~830 bytes a datagram
    proc.send_signal(signal.SIGSTOP)
    try:
        sender.send(held)
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (b := bus()) and b["frames"] + b["lost_frames"] == sender.sent, 60,
             what="every frame received or counted lost")
    doc = status()
    pt = doc["buses"]["pt"]
    assert 0 < pt["lost_frames"] == pt["kernel_drops"] == doc["losses"]["kernel_dropped_frames"]
    assert pt["frames"] > 0
    reported = reported_doc(typed(doc))
    assert reported["buses"]["pt"]["lost_frames"] == pt["lost_frames"]
    assert reported["losses"]["kernel_dropped_frames"] == pt["lost_frames"]
    text = run_cli("status", "--config", str(path)).stdout
    assert f"lost frames {pt['lost_frames']} (socket drop counter" in text
    assert f"kernel_dropped_frames {pt['lost_frames']}" in text
    wait_for(lambda: any('"can_frames_lost"' in line for line in lines), 30, what="a can_frames_lost warning")
    event = json.loads(next(line for line in lines if '"can_frames_lost"' in line))
    assert event["bus"] == "pt" and event["new"] > 0 and event["rcvbuf_bytes"] == pt["rcvbuf_bytes"]


def test_a_datagram_python_can_cannot_parse_is_counted_and_the_bus_stays_open(udp_agent) -> None:
    """Garbage on the multicast group: python-can's recv raises for that one message; the source counts
    it and reads on. (It used to take the bus down and reopen it, losing the socket's queue uncounted.)"""
    proc, lines, sender, status, bus, path = udp_agent
    sender.send(100)
    sender.sock.send(b"not msgpack")
    sender.sock.send(b"\x81\xa3foo\x01")  # a msgpack map python-can's Message() refuses
    sender.send(100)
    wait_for(lambda: bus().get("frames") == 200, 60, what="the frames around the garbage")
    doc = status()
    pt = doc["buses"]["pt"]
    assert (pt["unreadable_frames"], pt["lost_frames"], pt["state"]) == (2, 2, "up")
    assert doc["losses"]["unreadable_frames"] == 2 and reported_doc(typed(doc))["losses"]["unreadable_frames"] == 2
    assert "unreadable_frames 2" in run_cli("status", "--config", str(path)).stdout
    wait_for(lambda: any('"can_message_unreadable"' in line for line in lines), 30, what="the warning")
    assert sum('"bus_open"' in line for line in lines) == 1, "the bus was never reopened"


def test_the_virtual_bus_backlog_is_bounded_and_its_overflow_counted() -> None:
    """python-can's virtual bus queues without bound in this process: beyond one drain's worth the oldest
    messages are dropped and counted (the bus has no kernel queue to fill)."""
    source = BusSource("v", "virtual", "loss-test-virtual")
    tx = can.Bus(interface="virtual", channel="loss-test-virtual", receive_own_messages=False)
    stop = asyncio.Event()
    surplus = 1234

    async def run() -> list:
        got = []
        async for frames in source.frames(stop):
            got.extend(frames)
            if len(got) >= MAX_DRAIN:
                stop.set()
        return got

    async def main() -> list:
        task = asyncio.create_task(run())
        while source.state != "up":
            await asyncio.sleep(0.001)
        for i in range(MAX_DRAIN + surplus):  # before the source's first drain (100 ms tick)
            tx.send(can.Message(arbitration_id=0x100, data=i.to_bytes(4, "little"), is_extended_id=False))
        return await task

    try:
        got = asyncio.run(main())
    finally:
        tx.shutdown()
        source.close()
    st = source.status()
    assert (st["backlog_drops"], st["lost_frames"], st["kernel_drops"]) == (surplus, surplus, 0)
    assert st["loss_seen"] == "backlog bound"
    assert int.from_bytes(got[0].data, "little") == surplus  # the oldest went
    assert len(got) == MAX_DRAIN


def test_the_tick_follows_how_full_the_queue_was() -> None:
    assert next_tick(0.1, TARGET_FILL * 2, 0.1) == pytest.approx(0.05)  # twice too full: half the tick
    assert next_tick(0.1, 1.0, 0.1) == pytest.approx(0.025)
    assert next_tick(0.01, 1.0, 0.1) == MIN_TICK_S
    assert next_tick(0.04, TARGET_FILL, 0.1) == 0.04  # on target: kept
    assert next_tick(0.04, 0.0, 0.1) == pytest.approx(0.05)  # quiet: back up slowly
    assert next_tick(0.1, 0.0, 0.1) == 0.1


def test_a_bus_restarted_by_a_config_swap_keeps_its_loss_counters(udp_agent) -> None:
    """A swap that changes a bus's settings restarts its source (a new one): what the old one lost stays
    counted in the bus's status and the losses (they went back to 0: a counter that runs backwards)."""
    proc, lines, sender, status, bus, path = udp_agent
    sender.sock.send(b"not msgpack")
    sender.send(10)
    wait_for(lambda: bus().get("frames") == 10, 60, what="the frames after the garbage")
    assert bus()["unreadable_frames"] == 1
    cfg = yaml.safe_load(path.read_text())
    cfg["buses"][0]["bitrate"] = 250000   # a bus setting: its source is restarted
    path.write_text(yaml.safe_dump(cfg))
    opened = sum('"bus_open"' in line for line in lines)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sum('"bus_open"' in line for line in lines) > opened, 60, what="the bus reopened by the swap")
    wait_for(lambda: bus().get("state") == "up", 60, what="the restarted bus up")
    sender.sock.send(b"not msgpack either")
    sender.send(10)
    wait_for(lambda: bus().get("frames") == 20, 60, what="the frames after the swap")
    doc = status()
    assert doc["buses"]["pt"]["unreadable_frames"] == 2 and doc["buses"]["pt"]["lost_frames"] == 2
    assert doc["losses"]["unreadable_frames"] == 2


def test_a_bus_whose_fileno_raises_a_can_error_has_no_socket_queue() -> None:
    """python-can's serial, slcan and robotell buses raise CanOperationError from fileno() on an
    unexpected error: the bus is read without a socket queue instead of failing its open."""
    from agent.can.rxqueue import SocketQueue

    class SerialLike(can.BusABC):
        def __init__(self) -> None:
            super().__init__(channel="x")

        def fileno(self) -> int:
            raise can.CanOperationError("port gone")

        def send(self, msg: can.Message, timeout: float | None = None) -> None:
            raise NotImplementedError

        def _recv_internal(self, timeout: float | None) -> tuple[None, bool]:
            return None, False

    bus = SerialLike()
    try:
        assert SocketQueue.of(bus) is None
    finally:
        bus.shutdown()
