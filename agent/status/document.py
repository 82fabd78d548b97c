"""The status document as types: what `vehicle-agent status`, the status file, the reported properties
and the `get_status` method show, built in one place (agent.status.builder).

Each section is a dataclass; `to_dict` is the JSON every reader sees (its keys are the contract that
docs/durability.md, the tests and fleet tools name), and `StatusDocument.from_dict` reads such JSON
back, refusing a key it does not know or a key that is missing, so the types and the JSON cannot
drift apart. Readers in the agent (the reported properties, the direct methods, the progress line)
read the types: a renamed field is a mypy error there, not a silent None.

A bus's source and a sink add their own keys to their sections (`SOURCE_KEYS`, `SINK_KEYS`: the keys
they may add); the parts whose whole report is one section of its own (the control plane, the
campaigns, remote databases, the software update, the spill, the write-ahead log, the simulator)
keep it as that part reports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.health import losses

SectionT = TypeVar("SectionT")


class ShapeError(ValueError):
    """A JSON document that is not a status document of this version: which key, and why."""


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ShapeError(f"{where}: not an object")
    return data


def _exact(data: Any, keys: tuple[str, ...], where: str, *, optional: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """`data` as a mapping with exactly `keys` (those in `optional` may be absent); ShapeError otherwise."""
    data = _mapping(data, where)
    missing = [k for k in keys if k not in data and k not in optional]
    unknown = [k for k in data if k not in keys]
    if missing or unknown:
        raise ShapeError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
    return data


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _flat(cls: type[SectionT], data: Any, where: str) -> SectionT:
    """A section whose JSON is its fields, one key each."""
    return cls(**_exact(data, _names(cls), where))


def _as_dict(section: Any) -> dict[str, Any]:
    """A flat section's JSON: its fields in order (values as they are, not copied deeply)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


@dataclass(slots=True)
class AgentInfo:
    """Which agent wrote the document."""

    version: str
    pid: int
    host: str
    started: float
    vehicle_id: str
    config_version: int


@dataclass(slots=True)
class BusCounts:
    """A bus's collector counters (agent.collect.collector.BusCounters.as_dict)."""

    frames: int = 0
    error_frames: int = 0
    unknown_ids: int = 0
    unknown_distinct_ids: int = 0
    filtered: int = 0
    decode_errors: int = 0
    samples: int = 0
    refused_timestamps: int = 0
    refused_values: int = 0


# What a bus's source adds to its bus's section (FrameSource.status() of every source: the state of
# any source; a live bus's losses and receive queue; the raw SocketCAN reader's controller health
# (agent/can/bus_health.py); a replay's bad lines). tests/test_status_document.py holds it to the sources.
SOURCE_KEYS = ("state", "last_error", "lost_frames", "kernel_drops", "backlog_drops", "unreadable_frames",
               "rcvbuf_bytes", "tick_ms", "loss_seen", "controller", "errors", "tx_error_counter",
               "rx_error_counter", "bad_lines", "filter_ids")
COUNT_KEYS = _names(BusCounts)


@dataclass(slots=True)
class BusStatus:
    """One bus: its rate, its collector's counters, what its source reports (empty once its source is gone,
    its losses summed over the sources the bus had this run), its simulator's counters, whether simulated."""

    frames_per_s: float
    counts: BusCounts
    source: dict[str, Any] = field(default_factory=dict)   # keys of SOURCE_KEYS
    simulator: dict[str, Any] | None = None                # SimulatorStats.as_dict(), a simulated bus only
    simulated: bool = False

    @property
    def state(self) -> str | None:
        """The source's state (up, down, missing, replaying, ...); None without a source."""
        state = self.source.get("state")
        return None if state is None else str(state)

    def to_dict(self) -> dict[str, Any]:
        return {"frames_per_s": self.frames_per_s, **_as_dict(self.counts), **self.source,
                **({"simulator": self.simulator} if self.simulator is not None else {}), "simulated": self.simulated}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BusStatus:
        keys = ("frames_per_s", *COUNT_KEYS, *SOURCE_KEYS, "simulator", "simulated")
        d = _exact(data, keys, where, optional=(*SOURCE_KEYS, "simulator"))
        return cls(d["frames_per_s"], BusCounts(**{k: d[k] for k in COUNT_KEYS}),
                   {k: d[k] for k in d if k in SOURCE_KEYS}, d.get("simulator"), d["simulated"])


# What the store section holds when the store cannot even be read (an error, not a crash).
UNREADABLE_STORE: dict[str, Any] = {"batches": None, "samples": None, "bytes": None, "by_priority": {},
                                    "oldest_pending_age_s": None, "counters": {}}
STATS_KEYS = (*UNREADABLE_STORE, "quarantine")  # agent.store.sqlite.StoreStats.as_dict


@dataclass(slots=True)
class StoreStatus:
    """The store: depth and counters (StoreStats.as_dict; None where it cannot be read), its file, a write
    error, the memory spill, the write-ahead log, the damaged files moved aside this run."""

    batches: int | None
    samples: int | None
    bytes: int | None
    by_priority: dict[str, dict[str, int]]
    oldest_pending_age_s: float | None
    counters: dict[str, int]
    quarantine: list[dict[str, Any]] | None  # None: the store could not be read
    path: str
    error: str | None
    spill: dict[str, Any]                    # SpillingStore.status()
    wal: dict[str, Any]                      # Wal.status()
    corrupt_moved_aside: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, stats: Mapping[str, Any], **rest: Any) -> StoreStatus:
        """From the store's statistics (or UNREADABLE_STORE) and the other fields by name."""
        stats = _exact(stats, STATS_KEYS, "store statistics", optional=("quarantine",))
        values: dict[str, Any] = {k: stats.get(k) for k in STATS_KEYS}
        return cls(**values, **rest)

    def to_dict(self) -> dict[str, Any]:
        out = _as_dict(self)
        if self.quarantine is None:
            del out["quarantine"]
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StoreStatus:
        d = _exact(data, _names(cls), where, optional=("quarantine",))
        values: dict[str, Any] = {k: d.get(k) for k in _names(cls)}
        return cls(**values)


@dataclass(slots=True)
class ForwarderState:
    """The forwarder's side of the uplink (agent.uplink.forwarder.ForwarderStatus.as_dict)."""

    state: str
    last_send: float | None
    last_error: str | None
    consecutive_failures: int
    backoff_s: float
    sent_batches: int


# What a sink adds to the sink section (Sink.state(): the file outbox, IoT Hub, MQTT, the fault
# wrapper). tests/test_status_document.py holds it to the sinks.
SINK_KEYS = ("outbox", "files_written", "outbox_bytes", "max_bytes", "removed_batches", "removed_bytes",
             "identity", "broker", "link", "connected", "connects", "last_connect", "link_error",
             "session_rebuilds", "session_restarts", "topics", "injected_failures")


@dataclass(slots=True)
class SinkStatus:
    """The uplink: the sink's type, the forwarder's state (sends, backoff) and what the sink reports."""

    type: str
    forwarder: ForwarderState
    sink: dict[str, Any] = field(default_factory=dict)  # keys of SINK_KEYS

    @property
    def connected(self) -> bool | None:
        """A cloud sink's link is up (None: a sink without a link, the file outbox)."""
        value = self.sink.get("connected")
        return None if value is None else bool(value)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **_as_dict(self.forwarder), **self.sink}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SinkStatus:
        forwarder = _names(ForwarderState)
        d = _exact(data, ("type", *forwarder, *SINK_KEYS), where, optional=SINK_KEYS)
        return cls(d["type"], ForwarderState(**{k: d[k] for k in forwarder}),
                   {k: d[k] for k in d if k in SINK_KEYS})


@dataclass(slots=True)
class TaskStatus:
    """One supervised task (agent.supervisor.Worker.as_dict)."""

    state: str
    restarts: int
    last_error: str | None
    last_error_at: float | None
    since_progress_s: float
    stall_s: float


@dataclass(slots=True)
class StatusFileState:
    """How writing the status file goes (the status of a failed write is carried by the next one)."""

    write_failures: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class StatusDocument:
    """The whole document; `losses` is derived from the sections, so it cannot drift from them."""

    updated: float
    agent: AgentInfo
    frames_per_s: float
    buses: dict[str, BusStatus]
    pending_samples: int
    batches_closed: int
    store: StoreStatus
    sink: SinkStatus
    control: dict[str, Any] = field(default_factory=dict)          # ControlPlane.state()
    tasks: dict[str, TaskStatus] = field(default_factory=dict)
    campaigns: dict[str, Any] = field(default_factory=dict)        # CampaignEngine.status(), {} without campaigns
    databases: dict[str, Any] = field(default_factory=dict)        # remote database versions (agent/remotedb)
    software_update: dict[str, Any] = field(default_factory=dict)  # the software update (agent/ota)
    status_file: StatusFileState = field(default_factory=StatusFileState)

    @property
    def simulated(self) -> bool:
        return any(b.simulated for b in self.buses.values())

    def losses(self) -> dict[str, int]:
        """The `losses` section (agent.health.LOSSES), from the store, spill, bus and sink sections."""
        return losses(self.store.counters, self.store.spill, {n: b.to_dict() for n, b in self.buses.items()},
                      self.sink.sink)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of `status.json`, `status --json`, `get_status` (the keys every reader names)."""
        return {"updated": self.updated, "agent": _as_dict(self.agent), "frames_per_s": self.frames_per_s,
                "buses": {name: b.to_dict() for name, b in self.buses.items()},
                "pending_samples": self.pending_samples, "batches_closed": self.batches_closed,
                "store": self.store.to_dict(), "sink": self.sink.to_dict(), "control": self.control,
                "tasks": {name: _as_dict(t) for name, t in self.tasks.items()}, "campaigns": self.campaigns,
                "databases": self.databases, "software_update": self.software_update,
                "status_file": _as_dict(self.status_file), "losses": self.losses()}

    @classmethod
    def from_dict(cls, data: Any) -> StatusDocument:
        """The document `to_dict` wrote (its `losses` derived again); ShapeError naming the first key
        that is missing or that this version does not know."""
        d = _exact(data, (*_names(cls), "losses"), "status")
        buses, tasks = _mapping(d["buses"], "buses"), _mapping(d["tasks"], "tasks")
        return cls(
            updated=d["updated"], agent=_flat(AgentInfo, d["agent"], "agent"), frames_per_s=d["frames_per_s"],
            buses={name: BusStatus.from_dict(b, f"buses.{name}") for name, b in buses.items()},
            pending_samples=d["pending_samples"], batches_closed=d["batches_closed"],
            store=StoreStatus.from_dict(d["store"], "store"), sink=SinkStatus.from_dict(d["sink"], "sink"),
            control=d["control"], tasks={name: _flat(TaskStatus, t, f"tasks.{name}") for name, t in tasks.items()},
            campaigns=d["campaigns"], databases=d["databases"], software_update=d["software_update"],
            status_file=_flat(StatusFileState, d["status_file"], "status_file"))
