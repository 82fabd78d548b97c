"""python-can interfaces in real time: frames lost and CPU at a bus's full rate, for 1, 3 and 8 buses.

Each bus is the agent's own `BusSource` (agent/can/source.py: its tick, its receive-buffer sizing,
its loss counters) feeding the agent's pipeline on one asyncio loop, as `vehicle-agent run` does.
The frames of the `udp_multicast` buses come from one sender process (agent/bench/sender.py,
python-can's own msgpack datagrams to each bus's group); a `virtual` bus lives in this process, so
a sender thread puts prepared messages straight into the bus's queue (what `VirtualBus.send` does
after its per-message deepcopy, which would cost the sender more than the agent). Figures: frames
sent, frames the collectors received, lost = sent - received, the sources' own `lost_frames`,
and the CPU of the loop's thread while frames flow (senders excluded).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import structlog
from can.interfaces import virtual
from can.interfaces.udp_multicast.utils import pack_message

from agent.bench.stages import TimedPipeline
from agent.bench.trace import Trace, build_trace
from agent.can.source import BusSource
from agent.config import AgentConfig, build_config
from agent.logs import set_level
from agent.model import Frame

INTERFACES = ("udp_multicast", "virtual")
GROUP = "239.74.163.{}"  # a multicast group and a port a bus: a socket bound to a port receives every group
# joined on it, so buses sharing a port would see each other's frames; ports are chosen per run
SETTLE_S = 10.0  # after the senders end: at most this long for the queued frames to be drained or counted lost


def config_with_buses(cfg: AgentConfig, count: int) -> AgentConfig:
    """`count` buses named bus0.. carrying the config's buses' databases in turn (no campaigns)."""
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    buses = data["buses"]
    data["buses"] = [dict(buses[i % len(buses)], name=f"bus{i}", replay=None, simulate=False,
                          databases=[str(cfg.resolve(p)) for p in buses[i % len(buses)]["databases"]])
                     for i in range(count)]
    data["campaigns"] = []
    return build_config(data, base_dir=cfg.base_dir)


def _message(f: Frame) -> can.Message:
    return can.Message(timestamp=f.t, arbitration_id=f.id, data=f.data, is_fd=f.is_fd,
                       is_extended_id=f.id > 0x7FF, check=False)


@contextlib.contextmanager
def _udp_sender(frames: list[list[Frame]], port: int, rate: float, count: int) -> Iterator[subprocess.Popen]:
    """One sender process for every bus (as one car), each bus `count` datagrams to its group at `rate`."""
    socks, files = [], []
    proc = None
    try:
        for i, bus_frames in enumerate(frames):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("@I", 1))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.connect((GROUP.format(10 + i), port + i))
            f = tempfile.NamedTemporaryFile(prefix="bench-udp-")
            files.append(f)
            f.write(b"".join(bytes([len(d)]) + d for d in (pack_message(_message(fr)) for fr in bus_frames)))
            f.flush()
        fds = [s.fileno() for s in socks]
        proc = subprocess.Popen([sys.executable, "-m", "agent.bench.sender", ",".join(map(str, fds)),
                                 ",".join(f.name for f in files), str(rate), str(count / rate)], pass_fds=fds)
        for sock in socks:
            sock.close()
        yield proc
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for sock in socks:
            sock.close()
        for f in files:
            f.close()


def _virtual_sender(channel: str, frames: list[Frame], rate: float, count: int, sent: list[int], i: int,
                    stop: threading.Event) -> None:
    """Puts `count` messages into the receiving buses' queues of `channel`, in 10 ms bursts at `rate`."""
    messages = [_message(f) for f in frames]
    queues = [q for q in virtual.channels[channel]]
    per_burst = max(1, round(rate * 0.01))
    start = time.monotonic()
    n = 0
    while n < count and not stop.is_set():
        for _ in range(min(per_burst, count - n)):
            msg = messages[n % len(messages)]
            for q in queues:
                q.put_nowait(msg)
            n += 1
        sent[i] = n
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def run_buses(trace: Trace, directory: Path, interface: str, buses: int, *, rate: float,
              seconds: float) -> dict[str, Any]:
    """One run: `buses` buses of `interface`, each sent `rate` frames a second for `seconds`."""
    cfg = config_with_buses(trace.config, buses)
    names = list(trace.frames)
    frames = [trace.frames[names[i % len(names)]] for i in range(buses)]
    p = TimedPipeline(cfg, Path(tempfile.mkdtemp(dir=directory)))
    port = random.randrange(40000, 60000, 16)
    if interface == "udp_multicast":
        sources = [BusSource(f"bus{i}", interface, GROUP.format(10 + i), port=port + i) for i in range(buses)]
    else:
        sources = [BusSource(f"bus{i}", interface, f"bench-rt-{port}-{i}") for i in range(buses)]
    count = round(rate * seconds)
    received = [0] * buses
    window: dict[str, float] = {}

    async def read(i: int, source: BusSource, stop: asyncio.Event) -> None:
        process = p.collectors[source.bus].process
        async for got in source.frames(stop):
            if not window:
                window.update(wall=time.monotonic(), cpu=time.thread_time())
            received[i] += len(got)
            process(got)

    async def run() -> tuple[float, float, list[int]]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(read(i, s, stop)) for i, s in enumerate(sources)]
        for _ in range(200):
            if all(s.state == "up" for s in sources):
                break
            await asyncio.sleep(0.02)
        sent = [0] * buses
        if interface == "udp_multicast":
            with _udp_sender(frames, port, rate, count) as proc:
                while proc.poll() is None:
                    await asyncio.sleep(0.05)
                    p.batcher.tick()
                ended, cpu_end = time.monotonic(), time.thread_time()
                if proc.returncode != 0:
                    raise RuntimeError(f"the udp_multicast sender exited with {proc.returncode}")
                sent = [count] * buses
        else:
            halt = threading.Event()
            threads = [threading.Thread(target=_virtual_sender, daemon=True,
                                        args=(s.channel, frames[i], rate, count, sent, i, halt))
                       for i, s in enumerate(sources)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                await asyncio.sleep(0.05)
                p.batcher.tick()
            ended, cpu_end = time.monotonic(), time.thread_time()
        deadline = time.monotonic() + SETTLE_S
        while sum(received) + sum(s.lost_frames for s in sources) < sum(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # what is still queued, and the drop counters read at the next drains
        stop.set()
        await asyncio.gather(*tasks)
        return max(ended - window.get("wall", ended), 1e-3), cpu_end - window.get("cpu", cpu_end), sent

    try:
        wall, cpu, sent = asyncio.run(run())
    finally:
        for s in sources:
            s.close()
        p.batcher.flush()
        p.close()
    total, got = sum(sent), sum(received)
    return {"interface": interface, "buses": buses, "rate_per_bus": rate, "sent": total, "received": got,
            "lost": total - got, "lost_percent": round(100 * (total - got) / max(total, 1), 2),
            "lost_counted": sum(s.lost_frames for s in sources),
            "rcvbuf_bytes": sources[0].rcvbuf_bytes, "tick_ms": sources[0].tick_s * 1000,
            "cpu_percent": round(100 * cpu / wall, 2), "seconds": round(wall, 2),
            "sent_per_s_per_bus": round(total / buses / wall)}


def python_can_realtime(trace: Trace, directory: Path, *, rate: float = 8000, seconds: float = 3.0,
                        bus_counts: tuple[int, ...] = (1, 3, 8)) -> list[dict[str, Any]]:
    """Every interface of INTERFACES at every bus count. The sources' own warnings (`can_frames_lost`)
    are held back while they run: their losses are in the figures."""
    saved = structlog.get_config()["wrapper_class"]
    set_level("error")
    try:
        return [run_buses(trace, directory, interface, n, rate=rate, seconds=seconds)
                for interface in INTERFACES for n in bus_counts]
    finally:
        structlog.configure(wrapper_class=saved)


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The report's lines for these runs."""
    lines = ["python-can in real time, 8,000 frames/s a bus (lost = sent - received; counted = the buses' lost_frames):"]
    for r in rows:
        buffer = f"receive buffer {r['rcvbuf_bytes']:,} B" if r["rcvbuf_bytes"] else "in-process queue"
        lines.append(f"  {r['interface'] + ' x' + str(r['buses']):<18}{r['cpu_percent']:>6} % of one core, "
                     f"{r['sent']:,} sent, {r['lost']:,} lost ({r['lost_percent']} %), {r['lost_counted']:,} counted; "
                     f"{buffer}, tick {r['tick_ms']:.0f} ms"
                     + (f"; the sender reached only {r['sent_per_s_per_bus']:,} frames/s a bus"
                        if r["sent_per_s_per_bus"] < 0.95 * r["rate_per_bus"] else ""))
    return lines


def main(argv: list[str]) -> int:
    """`python -m agent.bench.pycan [SECONDS [BUS_COUNTS]]`: this stage alone, on the bundled car."""
    from agent.config import load_config

    seconds = float(argv[0]) if argv else 3.0
    counts = tuple(int(n) for n in argv[1].split(",")) if len(argv) > 1 else (1, 3, 8)
    cfg = load_config(Path(__file__).resolve().parents[2] / "config" / "agent.yaml")
    trace = build_trace(cfg, 20.0)
    with tempfile.TemporaryDirectory(prefix="vehicle-agent-bench-") as tmp:
        rows = python_can_realtime(trace, Path(tmp), seconds=seconds, bus_counts=counts)
    sys.stdout.write("\n".join(format_rows(rows)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
