"""Which source reads a configured bus: a replay, the raw SocketCAN reader, any python-can interface,
or python-can's virtual bus fed by the built-in simulator (`choose_source` says when).

The runtime (agent.app) asks here, so what reads a bus is decided in can/, beside the sources.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import can
import structlog
from cantools.database import Database

from agent.can.rawcan import RawCanSource
from agent.can.simulator import SimulatorStats, run_simulator
from agent.can.source import BusSource, FrameSource, ReplaySource, bus_kwargs, choose_source
from agent.config import BusConfig

log = structlog.get_logger()


def source_for(bus: BusConfig, sink_type: str, resolve: Callable[[str], Path]) -> tuple[FrameSource, bool]:
    """The source of a bus, and whether the built-in simulator should feed it. `resolve` makes a
    config path (the replay log) absolute."""
    if bus.replay:
        return ReplaySource(bus.name, resolve(bus.replay), rate=bus.replay_rate), False
    choice = choose_source(bus.interface, bus.channel, bus.simulate, sink_type)
    if choice.simulate:
        log.warning("simulated_data", bus=bus.name, channel=bus.channel, why=choice.reason,
                    marked="every batch of this bus says simulated (header, message properties, outbox, status)",
                    fix=f"create {bus.channel} or set the bus's interface (and simulate: false) to read a real bus")
    if choice.interface == "socketcan" and not bus.options:
        return RawCanSource(bus.name, bus.channel, fd=bus.fd), False
    source = BusSource(bus.name, choice.interface, bus.channel,
                       **bus_kwargs(bus.bitrate, bus.data_bitrate, bus.fd, bus.options))
    return source, choice.simulate


async def simulate_bus(bus: BusConfig, database: Database, stop: asyncio.Event, stats: SimulatorStats) -> None:
    """Drive the built-in vehicle simulator on the bus's virtual channel until `stop`, counting into
    `stats` (the caller keeps them across restarts)."""
    sim_bus = can.Bus(interface="virtual", channel=bus.channel, receive_own_messages=False)
    try:
        await run_simulator(sim_bus, database, stop=stop, seed=sum(bus.name.encode()), stats=stats)
    finally:
        sim_bus.shutdown()
