"""The benchmark's live parts: CPU at a real bus rate, memory of the running agent, a config swap.

These run the agent's real parts on real clocks: the raw SocketCAN source on its 100 ms tick fed by
a sender process at 8,000 frames/s; the `vehicle-agent run` process itself on three simulated
buses (its RSS sampled from /proc); and `Agent.apply_config` on a running agent while frames flow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import can
import yaml

from agent.app import Agent
from agent.bench.stages import TimedPipeline, sender_socket
from agent.bench.trace import Trace
from agent.can.frame_format import pack_frame
from agent.can.rawcan import RawCanSource
from agent.config import AgentConfig, build_config


def config_data(cfg: AgentConfig, state_dir: Path, *, simulate: bool) -> dict[str, Any]:
    """`cfg` as a config mapping for a throw-away agent: absolute database paths, virtual buses, a file sink."""
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    for bus in data["buses"]:
        bus.update(databases=[str(cfg.resolve(p)) for p in bus["databases"]], interface="virtual",
                   channel=f"bench-{bus['name']}", simulate=simulate, replay=None)
    data.update(state_dir=str(state_dir), sink={"type": "file", "path": "outbox"}, log_level="warning")
    return data


def realtime(trace: Trace, directory: Path, *, rate: float, seconds: float) -> dict[str, float]:
    """CPU share of the agent's read + pipeline while a sender process delivers `rate` frames a second."""
    bus = max(trace.frames, key=lambda b: len(trace.frames[b]))
    grams = [pack_frame(f.id, f.data, fd=f.is_fd) for f in trace.frames[bus]]
    p = TimedPipeline(trace.config, directory)
    process, tick = p.collectors[bus].process, p.batcher.tick
    received = 0

    async def run(source: RawCanSource) -> tuple[float, float]:
        """Times from the first frame (the sender process needs a moment to start) for `seconds`."""
        nonlocal received
        stop = asyncio.Event()
        wall = cpu = 0.0
        last_tick = time.monotonic()
        async for frames in source.frames(stop):
            if not wall:
                wall, cpu = time.monotonic(), time.process_time()
                asyncio.get_running_loop().call_later(seconds, stop.set)
            else:
                received += len(frames)
            process(frames)
            if time.monotonic() - last_tick >= 1.0:
                last_tick = time.monotonic()
                tick()
        return time.monotonic() - wall, time.process_time() - cpu

    with sender_socket(grams, rate, seconds + 1) as sock:
        source = RawCanSource(bus, "bench", sock=sock)
        wall, cpu = asyncio.run(run(source))
    p.batcher.flush()
    p.close()
    return {"cpu_percent": round(100 * cpu / wall, 2), "frames": received, "seconds": round(wall, 2),
            "frames_per_s_received": round(received / wall), "us_per_frame": round(cpu / max(received, 1) * 1e6, 2)}


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def agent_rss(cfg: AgentConfig, directory: Path, *, seconds: float) -> dict[str, float]:
    """RSS of a real `vehicle-agent run` on the config's buses (simulated), sampled over `seconds`."""
    path = directory / "soak.yaml"
    path.write_text(yaml.safe_dump(config_data(cfg, directory / "soak-state", simulate=True)))
    command = [sys.executable, "-m", "agent", "run", "--config", str(path), "--no-progress"]
    return {**rss_over(command, seconds=seconds), "buses": len(cfg.buses)}


def rss_over(command: list[str], *, seconds: float, settle_s: float = 2.0) -> dict[str, float]:
    """Run an agent command for `seconds`, its RSS sampled from /proc every 0.25 s after the first
    `settle_s` (start-up): peak, and the means of the first and second half (flat = no growth)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"})
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds and proc.poll() is None:
            time.sleep(0.25)
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - start, rss))
    finally:
        stop_process(proc)
    if proc.returncode not in (0, -signal.SIGTERM) or not samples:
        raise RuntimeError(f"the agent exited with {proc.returncode} during the memory soak")
    settled = [rss for t, rss in samples if t >= min(settle_s, seconds / 2)] or [samples[-1][1]]
    half = len(settled) // 2
    early = settled[:half] or settled
    late = settled[half:]
    return {"rss_mb": round(max(settled), 1), "rss_first_half_mb": round(sum(early) / len(early), 1),
            "rss_second_half_mb": round(sum(late) / len(late), 1), "seconds": round(samples[-1][0], 1)}


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd stops the agent; SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def config_swap(trace: Trace, directory: Path, *, swaps: int = 5, rate: float = 4000) -> dict[str, float]:
    """Apply new collection configs to a running agent while frames flow: time per swap, frames lost."""
    bus_cfg = trace.config.buses[0]
    data = config_data(trace.config, directory / "swap-state", simulate=False)
    data["buses"] = [b for b in data["buses"] if b["name"] == bus_cfg.name]
    data["campaigns"] = []  # they may read the buses left out; swaps are timed without them
    frames = trace.frames[bus_cfg.name]
    variants = [dict(data, collection={"default": {"policy": "all"}}), data]

    async def run() -> tuple[list[float], int, int]:
        agent = Agent(build_config(data, base_dir=directory), base=data)
        task = asyncio.create_task(agent.run())
        channel = data["buses"][0]["channel"]
        tx = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        times: list[float] = []
        sent = 0
        try:
            for _ in range(200):
                if agent.status()["buses"].get(bus_cfg.name, {}).get("state") == "up":
                    break
                await asyncio.sleep(0.05)
            per_tick = int(rate / 100)
            total = min(len(frames), per_tick * 100 * (swaps + 1) // 2)
            next_swap = total // (swaps + 1)
            while sent < total:
                for f in frames[sent:sent + per_tick]:
                    tx.send(can.Message(timestamp=f.t, arbitration_id=f.id, data=f.data, is_fd=f.is_fd,
                                        is_extended_id=f.id > 0x7FF, check=False))
                sent += len(frames[sent:sent + per_tick])
                if sent >= next_swap and len(times) < swaps:
                    new = build_config(variants[len(times) % 2], base_dir=directory)
                    start = time.perf_counter()
                    agent.apply_config(new)
                    times.append(time.perf_counter() - start)
                    next_swap += total // (swaps + 1)
                await asyncio.sleep(0.01)
            for _ in range(100):
                if agent.counters[bus_cfg.name].frames >= sent:
                    break
                await asyncio.sleep(0.05)
            counted = agent.counters[bus_cfg.name].frames
        finally:
            tx.shutdown()
            agent.stop.set()
            await asyncio.wait_for(task, 60)
        return times, sent, counted

    times, sent, counted = asyncio.run(run())
    return {"config_swap_ms": round(max(times) * 1000, 2), "config_swap_ms_median": round(sorted(times)[len(times) // 2] * 1000, 2),
            "swaps": len(times), "frames_sent": sent, "frames_dropped_during_swap": sent - counted}
