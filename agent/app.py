"""The agent's runtime: runs what one config builds, swaps configs, shuts down cleanly.

    sources ─► collector (decode + policy) ─► batcher (encode) ─► store ─► forwarder ─► sink

What it runs is built elsewhere: the pipeline by agent.pipeline, a bus's source by agent.can.choice,
the store's spill by agent.store.spill; its status document by agent.status.builder; what the cloud
may ask of it by agent.twin.commands, which the control plane owns.

Everything runs on one asyncio loop in one thread, so "between frames" is simply between two
`Collector.process` calls: a config swap replaces the collectors there, atomically, and a
rejected config changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from agent import __version__, logs
from agent.can.choice import simulate_bus, source_for
from agent.can.simulator import SimulatorStats
from agent.can.source import FrameSource, ReplaySource
from agent.collect.collector import Collector
from agent.config import AgentConfig, BusConfig, buses_to_restart
from agent.health import SOURCE_LOSSES, STATUS_FILE, write_status
from agent.liveness import beat
from agent.logs import set_level
from agent.ota.updater import Updater
from agent.pipeline import build, load_bus_databases
from agent.startup import process_age_s
from agent.status.builder import StatusBuilder
from agent.status.document import StatusDocument, StatusFileState
from agent.status.text import progress_line
from agent.store import Store
from agent.store.spill import SpillingStore
from agent.summary import SummaryLog
from agent.supervisor import Supervisor
from agent.systemd import Notifier
from agent.twin.commands import Commands
from agent.twin.control import HEARTBEAT_STALE_S, make_plane
from agent.twin.desired import DesiredState
from agent.uplink import Sink
from agent.uplink.factory import make_sink
from agent.uplink.forwarder import Forwarder

log = structlog.get_logger()

FINAL_DRAIN_S = 5.0
TASK_STOP_S = 5.0  # at shutdown, a task that does not end this long after `stop` (wedged) is cancelled
# Seconds without progress after which a task counts as wedged (the watchdog is then no longer fed).
SOURCE_STALL_S = 60.0       # a source beats every tick (0.1 s) and every second of a reopen backoff
HOUSEKEEPING_STALL_S = 10.0  # ticks every 0.25 s
STATUS_STALL_S = 30.0        # writes every second
SIMULATOR_STALL_S = float("inf")  # the built-in simulator (demo, tests) does not beat


def forwarder_stall_s(cfg: AgentConfig) -> float:
    """Twice the longest single call the sink may make (connect, send), since the forwarder cannot beat
    inside it; the file sink's writes get 5 s (its fault injection's ack_delay_ms counts against it)."""
    return 2 * cfg.sink.longest_call_s()


async def _ended(tasks: list[asyncio.Task]) -> None:
    """Wait for tasks told to stop; cancel those that do not end in time (a wedged sink call)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=TASK_STOP_S)
    for task in pending:
        log.warning("task_cancelled_at_stop", task=task.get_name(), waited_s=TASK_STOP_S)
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class Agent:
    """One running agent: owns the store, the sink, the sources and the current pipeline; runs, swaps, stops."""

    def __init__(self, cfg: AgentConfig, *, base: Mapping[str, Any] | None = None, sink: Sink | None = None,
                 progress: bool = False) -> None:
        # The twin's last applied desired state wins over the file, so an offline start runs it.
        self.desired = DesiredState(base if base is not None else cfg.model_dump(exclude={"base_dir"}),
                                    Path(cfg.base_dir), cfg.resolve(cfg.state_dir), self.apply_config)
        cfg = self.desired.load() or cfg
        self.cfg = cfg
        self.state_dir = cfg.resolve(cfg.state_dir)
        self.started = time.time()
        self.stop = asyncio.Event()
        self.supervisor = Supervisor(self.stop)
        self.notifier = Notifier()
        self.store = Store(cfg.state_path(cfg.store.path), max_bytes=cfg.store.max_bytes,
                           max_batches=cfg.store.max_batches, synchronous=cfg.store.synchronous,
                           ttl_s=cfg.store.ttl_by_priority, quarantine_max_bytes=cfg.store.quarantine_max_bytes,
                           wal_max_bytes=cfg.store.wal_max_bytes)
        self.sink = sink or make_sink(cfg)
        self.control = make_plane(Commands(self, self.status_document), self.desired, cfg, self.sink)  # agent/twin/
        self.forwarder = Forwarder(self.store, self.sink, retry_initial_s=cfg.sink.retry_initial_s,
                                   retry_max_s=cfg.sink.retry_max_s)
        # The store as the batcher sees it: commits, or a bounded memory spill while the disk fails.
        self.durable = SpillingStore(self.store, max_bytes=cfg.store.spill_max_bytes, on_stored=self.forwarder.notify)
        self.pipeline = build(cfg, on_batch=self.durable.put)
        self._campaign_clock: tuple[float, float] = (float("-inf"), 0.0)  # (engine time seen, monotonic then)
        self.batcher, self.counters = self.pipeline.batcher, self.pipeline.counters
        self.sources: dict[str, FrameSource] = {}
        self.source_losses: dict[str, dict[str, int]] = {}  # per bus: what its stopped sources lost
        self.simulators: dict[str, SimulatorStats] = {}  # bus -> what its built-in simulator did
        self._bus_tasks: dict[str, tuple[asyncio.Event, list[asyncio.Task]]] = {}
        self.progress = progress
        self.config_version = 0
        self.summary = SummaryLog(cfg.summary_interval_s)
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self._watchdog_withheld: dict[str, float] = {}
        self.watched_ids: dict[str, set[int]] = {}   # a database watch's extra receive-filter ids
        # software updates (agent/ota): the guard reads live signals through the campaign engine
        self.ota = Updater(cfg.ota, cfg.state_path(cfg.ota.download_dir), cfg.resolve, guard=self._update_guard,
                           healthy=self._healthy, on_change=self.control.reporter.wake.set)
        self.ota.configure(cfg.ota, cfg.software_update)
        self._decoding: set[str] = set()  # buses whose first decoded frame was logged (first_frame_decoded)
        self.status_file = StatusFileState()  # in status and reported
        self.status_builder = StatusBuilder(self, self.control.state)

    # ---------------------------------------------------------------- sources
    async def _run_source(self, source: FrameSource, stop: asyncio.Event) -> None:
        """Feed a bus's frames to its collector. A source that raises is marked down and the error goes
        to the supervisor (logged, counted, restarted): a bug must not stop collection on every other
        bus, nor on this one for good."""
        first = source.bus not in self._decoding
        try:
            async for frames in source.frames(stop):
                beat()
                collector = self.pipeline.collectors.get(source.bus)
                if collector is not None:
                    collector.process(frames)
                    if first and collector.counters.samples:
                        first = False
                        self._decoding.add(source.bus)
                        self._log_first_frame(source.bus, collector)
        except Exception as exc:
            source.state, source.last_error = "down", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            source.close()

    def _log_first_frame(self, bus: str, collector: Collector) -> None:
        """Start-up as an operator reads it: when the bus's first frame was decoded, in seconds since
        the process started and CPU seconds spent by then (`first_drain_s`: when the drain it came in
        was done, which includes compiling the other ids of that drain)."""
        now, age = time.monotonic(), process_age_s()
        at, cpu = collector.first_sample or (now, time.process_time())
        log.info("first_frame_decoded", bus=bus, since_process_start_s=None if age is None else round(age - (now - at), 3),
                 cpu_s=round(cpu, 3), first_drain_s=age)

    def _start_bus(self, bus: BusConfig) -> asyncio.Task:
        """Start a bus's source (and its simulator); returns the source task."""
        stop = asyncio.Event()
        source, simulate = source_for(bus, self.sink.name, self.cfg.resolve)
        self.sources[bus.name] = source
        self.batcher.simulated_buses = (self.batcher.simulated_buses | {bus.name}) if simulate \
            else self.batcher.simulated_buses - {bus.name}
        source.set_wanted_ids(self._receive_ids(bus.name))
        # A replay is not restarted after a crash (it would send its frames again); a live bus is.
        tasks = [self.supervisor.spawn(f"source:{bus.name}", lambda: self._run_source(source, stop),
                                       stall_s=SOURCE_STALL_S, stop=stop,
                                       restart=not isinstance(source, ReplaySource))]
        if simulate:
            stats = self.simulators.setdefault(bus.name, SimulatorStats())  # a restart keeps counting
            tasks.append(self.supervisor.spawn(
                f"simulator:{bus.name}", lambda: simulate_bus(bus, load_bus_databases(self.cfg, bus), stop, stats),
                stall_s=SIMULATOR_STALL_S, stop=stop))
        self._bus_tasks[bus.name] = (stop, tasks)
        return tasks[0]

    def _stop_bus(self, name: str) -> None:
        stop, _ = self._bus_tasks.pop(name, (None, []))
        if stop is not None:
            stop.set()
        source = self.sources.pop(name, None)  # its simulated mark stays: what it collected is flushed after this
        if source is not None:  # what it lost stays counted: a bus restarted by a swap gets a new source
            carried = self.source_losses.setdefault(name, {})
            for key, value in source.status().items():
                if key in SOURCE_LOSSES and isinstance(value, int):
                    carried[key] = carried.get(key, 0) + value
        self.supervisor.forget(f"source:{name}")
        self.supervisor.forget(f"simulator:{name}")

    # ---------------------------------------------------------------- config swap
    def apply_config(self, new: AgentConfig) -> None:
        """Swap a validated config into the running pipeline between frames; raises before changing anything.

        Collectors are rebuilt (cheap, ~ms); sources restart only for buses whose bus settings changed,
        so an unchanged bus loses no frames: they wait in its receive queue while the swap runs.
        """
        self.pipeline.reconfigure(new)
        self.durable.max_bytes = new.store.spill_max_bytes
        self.store.max_bytes, self.store.max_batches = new.store.max_bytes, new.store.max_batches
        self.store.ttl_s = new.store.ttl_by_priority
        self.store.quarantine_max_bytes = new.store.quarantine_max_bytes
        self.store.wal.max_bytes = new.store.wal_max_bytes
        restart, removed = buses_to_restart(self.cfg, new)
        self.cfg = new
        set_level(new.log_level)
        self.summary.interval_s = new.summary_interval_s
        if self._running:
            for bus in restart:
                self._stop_bus(bus.name)
                self._start_bus(bus)
            for name in removed:
                self._stop_bus(name)
                self.counters.pop(name, None)
            for name, source in self.sources.items():
                source.set_wanted_ids(self._receive_ids(name))
        self.ota.configure(new.ota, new.software_update)
        self.config_version += 1
        log.info("config_applied", version=self.config_version, buses=[b.name for b in new.buses])

    def _receive_ids(self, bus: str) -> set[int] | None:
        """The ids a bus's receive filter passes: what the collector wants, and during a remote database
        watch (agent/remotedb) the ids the previous files knew, so that they count as unknown."""
        collector = self.pipeline.collectors.get(bus)
        return collector.wanted_ids | self.watched_ids.get(bus, set()) if collector else None

    def known_ids(self) -> dict[str, set[int]]:
        return {name: set(c.known_ids) for name, c in self.pipeline.collectors.items()}

    def pass_ids(self, ids: dict[str, set[int]]) -> None:
        self.watched_ids = ids
        for name, source in self.sources.items():
            source.set_wanted_ids(self._receive_ids(name))

    # ---------------------------------------------------------------- campaigns' clock, software updates
    def _advance_campaigns(self, now: float) -> None:
        """Frames stopped (ignition off, a replay's end): engine time moves on with the monotonic
        clock after a second of silence, so open events close and hold timers fire."""
        engine = self.pipeline.campaigns
        if engine is None:
            return
        latest = engine.latest()
        seen, since = self._campaign_clock
        if latest != seen:
            self._campaign_clock = (latest, now)
        elif now - since >= 1.0:
            engine.advance(latest + (now - since))

    def _update_guard(self) -> Any:
        """The software update guard's watch in the running campaign engine (None without a guard)."""
        engine = self.pipeline.campaigns
        return engine.watches.get("software_update") if engine is not None else None

    def _healthy(self) -> bool:
        """What a new software version must show before it is confirmed: no wedged task, a live control plane."""
        return not self.supervisor.stalled() and self.control.healthy()

    # ---------------------------------------------------------------- status
    def status_document(self) -> StatusDocument:
        """The status document now (agent.status.builder builds it)."""
        return self.status_builder.build()

    def status(self) -> dict[str, Any]:
        """The status document now, as JSON (`vehicle-agent status --json`, status.json)."""
        return self.status_document().to_dict()

    async def _housekeeping(self) -> None:
        """Close aged batches, retry the spill, feed the watchdog while every task makes progress."""
        while not self.stop.is_set():
            beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=0.25)
            self.batcher.tick()
            self._advance_campaigns(time.monotonic())
            if not self.stop.is_set():  # stopping: tasks end on purpose, and STOPPING=1 was sent
                self._feed_watchdog()
            if self.durable:
                self.durable.retry()

    def _feed_watchdog(self) -> None:
        """Ping systemd's watchdog only while no task is wedged (the control plane watches its channel
        with its own heartbeat): a wedged agent gets restarted."""
        stalled = self.supervisor.stalled()
        if not self.control.healthy():
            stalled["control"] = HEARTBEAT_STALE_S  # at least
        if not stalled:
            if self._watchdog_withheld:
                log.info("watchdog_resumed", tasks=sorted(self._watchdog_withheld))
            self._watchdog_withheld = {}
            self.notifier.watchdog()
            return
        if stalled.keys() != self._watchdog_withheld.keys():
            log.error("watchdog_withheld", stalled_s=stalled,
                      action="no progress: not feeding the systemd watchdog, so the service manager restarts us")
        self._watchdog_withheld = stalled

    async def _status_writer(self) -> None:
        """Write the status file, feed the periodic summary line, draw the progress line, every second."""
        while not self.stop.is_set():
            beat()
            doc = self.status_document()
            self._write_status(doc.to_dict(), "running")
            self.summary.observe(doc)
            if self.progress:
                logs.progress.show(progress_line(doc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=1.0)

    def _write_status(self, doc: dict[str, Any], when: str) -> None:
        """Write the status file; a failure is counted (`status_file.write_failures`, shown by the next
        status that gets written and by the reported properties) and logged once per distinct error,
        and always at the stop, whose status no later write can carry."""
        try:
            write_status(self.state_dir, doc)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.status_file.write_failures += 1
            if error != self.status_file.last_error or when == "stop":
                log.error("status_write_failed", path=str(self.state_dir / STATUS_FILE), error=error, when=when,
                          failures=self.status_file.write_failures,
                          action="vehicle-agent status shows the last status written"
                                 + ("" if when == "stop" else "; retrying every second"))
            self.status_file.last_error = error
            return
        if self.status_file.last_error is not None:
            log.info("status_write_recovered", path=str(self.state_dir / STATUS_FILE))
            self.status_file.last_error = None

    # ---------------------------------------------------------------- run
    async def run(self) -> None:
        """Run until `stop` is set (SIGTERM/Ctrl-C) or every source ended (replays)."""
        log.info("agent_start", version=__version__, vehicle_id=self.cfg.vehicle_id, sink=self.sink.name,
                 store=str(self.store.path), buses=[b.name for b in self.cfg.buses])
        self._running = True
        for bus in self.cfg.buses:
            self._start_bus(bus)
        spawn = self.supervisor.spawn
        self._tasks += [spawn("forwarder", lambda: self.forwarder.run(self.stop), stall_s=forwarder_stall_s(self.cfg)),
                        spawn("housekeeping", self._housekeeping, stall_s=HOUSEKEEPING_STALL_S),
                        spawn("status", self._status_writer, stall_s=STATUS_STALL_S),
                        spawn("control", lambda: self.control.run(self.stop), stall_s=float("inf")),
                        # remote database versions (agent/remotedb): downloads and parses are bounded
                        # by their own limits, so the task's stall limit is not what ends them
                        spawn("databases", lambda: self.desired.databases.run(
                            self.stop, settings=lambda: self.cfg, activator=self.desired, buses=self),
                              stall_s=float("inf")),
                        # an install may take many minutes inside the installer: not a wedge
                        spawn("ota", lambda: self.ota.run(self.stop), stall_s=float("inf"))]
        self.notifier.ready(f"collecting from {len(self.cfg.buses)} bus(es), sink {self.sink.name}")
        try:
            while not self.stop.is_set():
                sources = [tasks[0] for _, tasks in self._bus_tasks.values()]
                if not sources or all(t.done() for t in sources):
                    break  # every source ended (replays): finish like a SIGTERM
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=0.5)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Flush what memory holds into the store, give the sink a last chance, close everything."""
        self.notifier.stopping()
        self.stop.set()
        for name in list(self._bus_tasks):
            stop, tasks = self._bus_tasks[name]
            stop.set()
            await _ended(tasks)  # the source stays listed: the final status keeps its state and counters
        if self.pipeline.campaigns is not None:  # open events go out with what they have (marked incomplete)
            self.pipeline.campaigns.flush()
        self.pipeline.flush()
        if self.durable:
            self.durable.retry()
        await _ended(self._tasks)
        sent = await self.forwarder.drain(FINAL_DRAIN_S)
        await self.forwarder.close()
        spilled_lost = len(self.durable.spill)
        self.durable.drop_all()  # the store never became writable: what memory holds is lost now, counted
        doc = self.status_document()
        self._write_status(doc.to_dict(), "stop")
        if self.progress:
            logs.progress.show(progress_line(doc))
            logs.progress.done()
        self.store.close()
        self.notifier.close()
        log.info("agent_stopped", final_sends=sent, store_depth=doc.store.batches, spilled_lost=spilled_lost)
