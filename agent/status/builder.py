"""The one builder of the status document, from the parts of a running agent.

The runtime (agent.app) only runs, swaps and shuts down; what it runs is read here once a second
(the status file, the summary line, the progress line) and on demand (the control plane's reported
state and `get_status`).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent import __version__
from agent.can.simulator import SimulatorStats
from agent.can.source import FrameSource
from agent.config import AgentConfig
from agent.health import RateMeter
from agent.ota.updater import Updater
from agent.pipeline import Pipeline
from agent.status.document import (
    UNREADABLE_STORE,
    AgentInfo,
    BusCounts,
    BusStatus,
    ForwarderState,
    SinkStatus,
    StatusDocument,
    StatusFileState,
    StoreStatus,
    TaskStatus,
)
from agent.store import Store
from agent.store.spill import SpillingStore
from agent.supervisor import Supervisor
from agent.twin.desired import DesiredState
from agent.uplink import Sink
from agent.uplink.forwarder import Forwarder


class Running(Protocol):
    """What the builder reads of a running agent (agent.app.Agent)."""

    cfg: AgentConfig
    config_version: int
    started: float
    pipeline: Pipeline
    sources: dict[str, FrameSource]
    source_losses: dict[str, dict[str, int]]  # per bus: what its stopped sources lost this run
    simulators: dict[str, SimulatorStats]
    store: Store
    durable: SpillingStore
    sink: Sink
    forwarder: Forwarder
    supervisor: Supervisor
    desired: DesiredState
    ota: Updater
    status_file: StatusFileState


class StatusBuilder:
    """Builds the StatusDocuments of one agent; keeps the rate meters between two builds."""

    def __init__(self, running: Running, control: Callable[[], dict[str, Any]]) -> None:
        self.running = running
        self.control = control  # the control plane's state
        self._frame_rate = RateMeter()
        self._bus_rates: dict[str, RateMeter] = {}

    def build(self) -> StatusDocument:
        r = self.running
        counters = r.pipeline.counters
        simulated = r.pipeline.batcher.simulated_buses
        buses = {name: BusStatus(round(self._bus_rates.setdefault(name, RateMeter()).update(c.frames), 1),
                                 BusCounts(**c.as_dict()), self._source_status(name),
                                 r.simulators[name].as_dict() if name in r.simulators else None, name in simulated)
                 for name, c in counters.items()}
        campaigns = r.pipeline.campaigns
        return StatusDocument(
            updated=time.time(),
            agent=AgentInfo(__version__, os.getpid(), socket.gethostname(), r.started, r.cfg.vehicle_id,
                            r.config_version),
            frames_per_s=round(self._frame_rate.update(sum(c.frames for c in counters.values())), 1),
            buses=buses,
            pending_samples=r.pipeline.batcher.pending_samples,
            batches_closed=r.pipeline.batcher.batches_closed,
            store=StoreStatus.of(self._store_stats(), path=str(r.store.path), error=r.durable.error,
                                 spill=r.durable.status(), wal=r.store.wal.status(),
                                 corrupt_moved_aside=[str(p) for p in r.store.quarantined]),
            sink=SinkStatus(r.sink.name, ForwarderState(**r.forwarder.status.as_dict()), r.sink.state()),
            control=self.control(),
            tasks={name: TaskStatus(**t) for name, t in r.supervisor.status().items()},
            campaigns=campaigns.status() if campaigns is not None else {},
            databases=r.desired.databases.status(),
            software_update=r.ota.report(),
            status_file=StatusFileState(r.status_file.write_failures, r.status_file.last_error),
        )

    def _source_status(self, name: str) -> dict[str, Any]:
        """The bus's source's status, its loss counters summed over every source the bus had this run."""
        r = self.running
        out = r.sources[name].status() if name in r.sources else {}
        for key, value in r.source_losses.get(name, {}).items():
            out[key] = int(out.get(key) or 0) + value
        return out

    def _store_stats(self) -> dict[str, Any]:
        """Depth and counters; a store that cannot even be read shows as an error, not a crash."""
        r = self.running
        try:
            return r.store.stats().as_dict()
        except sqlite3.Error as exc:
            r.durable.failed(exc)
            return dict(UNREADABLE_STORE)
