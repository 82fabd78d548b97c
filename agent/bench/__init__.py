"""`vehicle-agent bench`: what each stage of the agent costs on this machine, and on the wire.

Run it on the target hardware with your own DBC (`--dbc`) or config (`--config`): a simulated
drive on every bus is pushed through the real parts (decoders, collectors, batcher, codecs,
SQLite store, the raw SocketCAN reader, the running agent) and each is timed in CPU seconds.
docs/performance.md explains every figure and what we measured on our machines.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.bench import live, stages
from agent.bench.campaigns import campaigns_stage
from agent.bench.store import bench_store
from agent.bench.trace import build_trace
from agent.bench.wire import wire
from agent.can.simulator import frames_per_second
from agent.config import AgentConfig, CollectionConfig, build_config
from agent.pipeline import load_bus_databases, preload

Progress = Callable[[str], None]


MAX_FRAMES = 60_000  # the bundled car's 60 s drive is 44,880 frames


def config_for_databases(databases: list[str], collection: CollectionConfig) -> AgentConfig:
    """`bench --dbc`: one bus decoded with these databases under a config's collection policy;
    raises ConfigError (source `--dbc`) when a file is missing."""
    base = {"vehicle_id": "bench", "buses": [{"name": "bus0", "databases": [str(Path(d).resolve()) for d in databases]}],
            "collection": collection.model_dump(mode="json")}
    return build_config(base, base_dir=Path.cwd(), source="--dbc")


def simulated_seconds(cfg: AgentConfig, seconds: float) -> float:
    """How long a drive to simulate: 60 s (20 s for a quick run), fewer for a database so large that
    the drive would pass MAX_FRAMES (a third for a quick run): every stage runs over the whole
    drive, so its size, not the database's, must bound the benchmark's time."""
    sim_s, cap = (60.0, MAX_FRAMES) if seconds >= 10 else (20.0, MAX_FRAMES // 3)
    rate = sum(frames_per_second(load_bus_databases(cfg, bus)) for bus in cfg.buses)
    return sim_s if rate * sim_s <= cap else max(1.0, round(cap / rate, 1))


def run_bench(cfg: AgentConfig, *, seconds: float = 20.0, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Every figure of the benchmark, in about `seconds` of wall time."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vehicle-agent-bench-") as tmp:
        directory = Path(tmp)
        preload(cfg)  # the heap as `vehicle-agent run` has it
        sim_s = simulated_seconds(cfg, seconds)
        progress(f"simulating {sim_s:.0f} s of driving on {len(cfg.buses)} bus(es)")
        trace = build_trace(cfg, sim_s)
        result: dict[str, Any] = {"frames": trace.count, "buses": [b.name for b in cfg.buses],
                                  "simulated_s": sim_s}
        progress(f"cantools decode_message on {trace.count} frames (the yardstick)")
        cantools = stages.cantools_decode(trace, 0.08 * seconds)
        progress("compiled decoders")
        decode = stages.fast_decode(trace, 0.04 * seconds)
        progress("pipeline after the bus read: collect -> encode+compress -> store")
        pipeline, split = stages.pipeline(trace, directory, 0.12 * seconds)
        again = stages.cantools_decode(trace, 0.04 * seconds)  # before and after: noise on a shared machine
        cantools = min(cantools, again, key=lambda s: s["us_per_frame"])  # hits both sides of the ratio alike
        pipeline["ratio_to_cantools"] = round(pipeline["us_per_frame"] / cantools["us_per_frame"], 3)
        progress("bus read + pipeline: raw SocketCAN drain, python-can Bus.recv")
        socket_read = stages.with_socket_read(trace, directory)
        python_can = stages.with_python_can_read(trace, directory)
        result["stages"] = {"cantools_decode_message": cantools, "decode": decode, **split,
                            "bus_read_socketcan": _difference(socket_read, pipeline),
                            "bus_read_python_can": _difference(python_can, pipeline)}
        result["pipeline"] = pipeline
        progress("campaigns: ten campaigns against none")
        result["campaigns"] = campaigns_stage(trace, directory, 0.1 * seconds)
        result["with_bus_read"] = {**socket_read, "via": _socket_kind(),
                                   "python_can_virtual": python_can}
        progress("8,000 frames/s in real time from a sender process")
        result["realtime_8000"] = live.realtime(trace, directory, rate=8000, seconds=max(1.5, 0.15 * seconds))
        progress("python-can udp_multicast and virtual at 8,000 frames/s a bus in real time: frames lost, CPU")
        result["python_can_realtime"] = _pycan().python_can_realtime(trace, directory, seconds=max(1.0, 0.1 * seconds),
                                                            bus_counts=(1, 3, 8) if seconds >= 10 else (1, 3))
        progress("wire bytes per sample, every sample kept")
        result["wire"] = wire(trace)
        progress("store: commit and drain per fsync setting")
        result["store"] = bench_store(max(0.3, 0.08 * seconds), directory)
        progress("memory of a running agent (soak)")
        soak = live.agent_rss(cfg, directory, seconds=max(3.0, 0.2 * seconds))
        result["rss_mb"] = soak.pop("rss_mb")
        result["soak"] = soak
        progress("live config swaps while frames flow")
        swap = live.config_swap(trace, directory, swaps=5 if seconds >= 10 else 3)
        result["config_swap_ms"] = swap.pop("config_swap_ms")
        result["frames_dropped_during_swap"] = swap.pop("frames_dropped_during_swap")
        result["config_swap"] = swap
    result["bench_wall_s"] = round(time.monotonic() - began, 1)
    return result


def _difference(with_read: dict[str, float], without: dict[str, float]) -> dict[str, float]:
    """The read's own cost: the pipeline with the read minus the pipeline alone."""
    us = max(0.0, with_read["us_per_frame"] - without["us_per_frame"])
    return {"us_per_frame": round(us, 3), "frames_per_s": round(1e6 / us) if us else 0}


def _pycan() -> ModuleType:
    """agent.bench.pycan, imported when used: `python -m agent.bench.pycan` runs it as a script."""
    import agent.bench.pycan

    return agent.bench.pycan


def _socket_kind() -> str:
    from agent.can.source import socketcan_available

    if socketcan_available("vcan0"):
        return "AF_UNIX socketpair (the bench does not write to vcan0)"
    return "AF_UNIX socketpair standing in for AF_CAN (this kernel has no CAN); same can_frame datagrams"


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = [f"vehicle-agent bench: {r['frames']} frames, {r['simulated_s']:.0f} s simulated on "
             f"{', '.join(r['buses'])}; CPU time on one core, best of runs", "",
             f"{'stage':<28}{'frames/s':>12}{'us/frame':>10}  what"]
    for name, s in r["stages"].items():
        lines.append(f"{name:<28}{s['frames_per_s']:>12,}{s['us_per_frame']:>10.3f}  {s.get('what', '')}")
    p = r["pipeline"]
    lines += ["", f"{'pipeline (after the read)':<28}{p['frames_per_s']:>12,}{p['us_per_frame']:>10.3f}  "
              f"ratio to cantools decode_message: {p['ratio_to_cantools']}  ({p['samples_per_frame']} samples/frame, "
              f"{p['wire_bytes_per_sample']} B/sample on the wire)"]
    w = r["with_bus_read"]
    lines.append(f"{'with the bus read':<28}{w['frames_per_s']:>12,}{w['us_per_frame']:>10.3f}  raw SocketCAN drain; {w['via']}")
    pc = w["python_can_virtual"]
    lines.append(f"{'with python-can Bus.recv':<28}{pc['frames_per_s']:>12,}{pc['us_per_frame']:>10.3f}  virtual bus")
    cs = r["campaigns"]
    lines.append(f"{'campaigns':<28}{'':>12}{cs['us_per_frame_added']:>10.3f}  added a frame by {cs['campaigns']} "
                 f"campaigns (target <= 0.25; median of {cs['pairs']} pairs); buffers {cs['buffer_bytes'] / 1024:.0f} KiB; "
                 f"{cs['triggers']} triggers, {cs['events']} events")
    rt = r["realtime_8000"]
    lines += ["", f"real time at 8,000 frames/s: {rt['cpu_percent']} % of one core "
              f"({rt['frames']} frames in {rt['seconds']} s, {rt['us_per_frame']} us/frame incl. wake-ups)", "",
              *_pycan().format_rows(r["python_can_realtime"]), "",
              "wire, every sample kept:"]
    for name, enc in r["wire"].items():
        lines.append(f"  {name:<26}{enc['bytes_per_sample']:>8.3f} bytes/sample")
    lines += ["", "store (batches committed / drained a second):"]
    for key, s in r["store"].items():
        lines.append(f"  {key:<26}" + ", ".join(f"{k} {v:,}" for k, v in s.items()))
    sk = r["soak"]
    lines += ["", f"agent RSS, {sk['buses']} buses: peak {r['rss_mb']} MB (first half {sk['rss_first_half_mb']}, "
              f"second half {sk['rss_second_half_mb']} over {sk['seconds']} s)",
              f"config swap: {r['config_swap_ms']} ms worst of {r['config_swap']['swaps']}, "
              f"{r['frames_dropped_during_swap']} of {r['config_swap']['frames_sent']} frames dropped",
              f"bench took {r['bench_wall_s']} s"]
    return "\n".join(lines)
