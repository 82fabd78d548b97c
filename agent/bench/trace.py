"""The benchmark's input: a simulated drive on every bus of a config, and how its costs are timed.

Costs are CPU time of this process (`time.process_time`), not wall time, so another program on the
machine does not inflate them; each figure is the best of a few repeats, the usual practice for
micro-benchmarks (noise only ever adds time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cantools.database import Database

from agent.can.simulator import VehicleSimulator
from agent.config import AgentConfig
from agent.model import Frame
from agent.pipeline import load_bus_databases

START_T = 1_700_000_000.0
CHUNK = 400  # frames per collector call: a 50 ms drain of a saturated 1 Mbit/s bus (the raw source drains 100 ms)


@dataclass(slots=True)
class Trace:
    """Frames of each bus of a config, in time order per bus."""

    config: AgentConfig
    databases: dict[str, Database]
    frames: dict[str, list[Frame]]
    seconds: float

    @property
    def count(self) -> int:
        return sum(len(f) for f in self.frames.values())

    def chunks(self) -> list[tuple[str, list[Frame]]]:
        """The trace as the agent sees it: (bus, up to CHUNK frames), buses interleaved by time."""
        out = [(bus, frames[i:i + CHUNK]) for bus, frames in self.frames.items() for i in range(0, len(frames), CHUNK)]
        out.sort(key=lambda item: item[1][0].t)
        return out

    def merged(self) -> list[tuple[str, Frame]]:
        """Every frame with its bus, in time order (what a sender replays)."""
        out = [(bus, f) for bus, frames in self.frames.items() for f in frames]
        out.sort(key=lambda item: item[1].t)
        return out


def build_trace(cfg: AgentConfig, seconds: float) -> Trace:
    """`seconds` of simulated driving on every bus of `cfg` (the built-in simulator, fixed seeds)."""
    databases, frames = {}, {}
    for i, bus in enumerate(cfg.buses):
        db = databases[bus.name] = load_bus_databases(cfg, bus)
        sim = VehicleSimulator(db, seed=1000 + i, start_t=START_T)
        frames[bus.name] = [Frame(f.t, f.id, f.data, f.is_fd) for f in sim.frames_until(seconds)]
    return Trace(cfg, databases, frames, seconds)


def cpu_best(run: Callable[[], object], *, repeats: int, budget_s: float) -> float:
    """The least CPU seconds one call of `run` took, over up to `repeats` calls within `budget_s`."""
    best = float("inf")
    deadline = time.monotonic() + budget_s
    for i in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
        if i >= 1 and time.monotonic() > deadline:
            break
    return best
