"""The campaigns stage: what ten realistic campaigns add to the pipeline, per frame of the whole car.

The same trace goes through the pipeline (collect -> encode -> store) with no campaign and with the
ten below (their events encoded and stored too), in interleaved pairs; the median difference per
frame is `campaigns.us_per_frame_added` (target: at most 0.25 us), and the rings' memory after the
drive is `campaigns.buffer_bytes`. Campaigns whose signals the databases lack (`bench --dbc other.dbc`) are
left out and counted.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.bench.trace import Trace
from agent.campaigns.engine import campaign_errors
from agent.campaigns.model import Campaign

WHEELS = [{"match": "WheelSpeed*"}]
BENCH_CAMPAIGNS: list[dict[str, Any]] = [
    {"id": "hard-braking", "trigger": {"expr": "BrakePressure > 100 || AbsActive == 1", "min_interval_ms": 10000},
     "signals": [{"match": "VehicleSpeed"}, *WHEELS, {"match": "LongitudinalAccel"}, {"match": "SteeringWheelAngle"}],
     "pre_s": 5, "post_s": 3},
    {"id": "abs-intervention", "trigger": {"expr": "AbsActive == 1"}, "signals": [*WHEELS, {"match": "BrakePressure"}],
     "pre_s": 3, "post_s": 2},
    {"id": "harsh-acceleration", "trigger": {"expr": "LongitudinalAccel > 3.0", "hold_ms": 300},
     "signals": [{"match": "VehicleSpeed"}, {"match": "EngineSpeed"}, {"match": "ThrottlePosition"}], "pre_s": 3, "post_s": 2},
    {"id": "sharp-steering", "trigger": {"expr": "abs(SteeringWheelRate) > 300 and VehicleSpeed > 30"},
     "signals": [{"match": "SteeringWheelAngle"}, {"match": "YawRate"}, {"match": "LateralAccel"}], "pre_s": 2, "post_s": 2},
    {"id": "over-rev", "trigger": {"expr": "EngineSpeed > 5500", "hold_ms": 500},
     "signals": [{"match": "CurrentGear"}, {"match": "EngineLoad"}], "pre_s": 5, "post_s": 1},
    {"id": "coolant-hot", "trigger": {"set": "CoolantTemp > 105", "reset": "CoolantTemp < 95"},
     "signals": [{"match": "*Temp*", "min_interval_ms": 1000}], "pre_s": 30, "post_s": 10},
    {"id": "battery-low", "trigger": {"expr": "BatteryVoltage < 11.8", "hold_ms": 2000},
     "signals": [{"match": "BatteryCurrent"}, {"match": "BatteryStateOfCharge"}], "pre_s": 10, "post_s": 5},
    {"id": "speeding", "trigger": {"expr": "VehicleSpeed > 130", "mode": "while", "min_interval_ms": 10000},
     "signals": [{"match": "VehicleSpeed"}], "pre_s": 10, "post_s": 0},
    {"id": "airbag", "trigger": {"expr": 'AirbagDeployment != "None"'}, "priority": "high",
     "signals": [{"match": "CrashSeverity"}, {"match": "VehicleSpeed"}, {"match": "LongitudinalAccel"}],
     "pre_s": 10, "post_s": 5},
    {"id": "snapshot", "period_ms": 10000, "priority": "low",
     "signals": [{"match": "OdometerTotal"}, {"match": "FuelLevel"}], "pre_s": 1, "post_s": 0},
]


def campaigns_stage(trace: Trace, directory: Path, budget_s: float) -> dict[str, Any]:
    """Pipeline CPU with the ten campaigns minus without any: the median of the differences of
    interleaved pairs (3 to 11 pairs within `budget_s`), so that a neighbour's burst on a shared
    machine moves one pair, not the figure (a difference of two best-of runs took a lucky run of
    either side)."""
    from agent.bench.stages import TimedPipeline  # late: stages imports the whole agent

    fitting = [c for c in map(Campaign.model_validate, BENCH_CAMPAIGNS)
               if not campaign_errors(trace.config.model_copy(update={"campaigns": [c]}))]
    configs = {"without": trace.config.model_copy(update={"campaigns": []}),
               "with": trace.config.model_copy(update={"campaigns": fitting})}
    chunks = trace.chunks()
    added: list[float] = []
    last: Any = None
    deadline = time.monotonic() + budget_s
    for i in range(11):
        cpu: dict[str, float] = {}
        for name, cfg in configs.items():
            p = TimedPipeline(cfg, Path(tempfile.mkdtemp(dir=directory)))
            start = time.process_time()
            for bus, frames in chunks:
                p.collectors[bus].process(frames)
            for c in p.collectors.values():
                c.flush()
            p.batcher.flush()
            cpu[name] = time.process_time() - start
            p.close()
            if name == "with":
                last = p
        added.append(cpu["with"] - cpu["without"])
        if i >= 2 and time.monotonic() > deadline:
            break
    engine = last.campaigns
    status = engine.status() if engine is not None else {"campaigns": {}}
    return {"campaigns": len(fitting), "left_out": len(BENCH_CAMPAIGNS) - len(fitting),
            "us_per_frame_added": round(max(0.0, statistics.median(added)) / trace.count * 1e6, 3),
            "pairs": len(added),
            "buffer_bytes": engine.buffer_bytes if engine is not None else 0,
            "triggers": sum(c["triggers"] for c in status["campaigns"].values()),
            "events": sum(c["events"] for c in status["campaigns"].values())}
