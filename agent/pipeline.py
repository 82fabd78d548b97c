"""What one config builds: the batcher and a collector per bus, wired the one way the agent and the
benchmark both use.

    frames ─► Collector (per bus: decode + policy) ─► Batcher (encode) ─► on_batch (the store)

`build` makes a pipeline; `Pipeline.reconfigure` swaps a new config in between two frame lists and
raises (a database that does not load) before changing anything.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cantools.database import Database

from agent.batcher import Batcher
from agent.campaigns.engine import CampaignEngine, Event, watches_of
from agent.codec import Codec, codec_for
from agent.collect.collector import BusCounters, Collector
from agent.config import AgentConfig, BusConfig
from agent.decode import FrameDecoder, load_databases
from agent.model import Batch, Priority

Scaling = dict[tuple[str, str], tuple[float, float]]


def load_bus_databases(cfg: AgentConfig, bus: BusConfig) -> Database:
    return load_databases([cfg.resolve(p) for p in bus.databases], strict=bus.strict)


def preload(cfg: AgentConfig) -> None:
    """Parse every bus's databases (load_databases keeps them), then take everything alive out of
    the cyclic GC's way (`gc.freeze`): a full collection would otherwise walk every object of a
    large database (~0.1 s for 1,500 messages) again and again while frames wait. Once, at start."""
    for bus in cfg.buses:
        load_bus_databases(cfg, bus)
    gc.collect()
    gc.freeze()


def codec_of(cfg: AgentConfig) -> Codec:
    """The codec `encoding` asks for."""
    return codec_for(cfg.encoding.format, timestamp_resolution=cfg.encoding.timestamp_resolution,
                     level=cfg.encoding.compression_level)


Tables = tuple[dict, ...]  # the message decoders (FrameDecoder.by_id) a scaling table was made from


def collectors_for(cfg: AgentConfig, batcher: Batcher, counters: dict[str, BusCounters],
                   previous: CampaignEngine | None = None, kept: tuple[Tables, Scaling] | None = None
                   ) -> tuple[dict[str, Collector], Scaling, CampaignEngine | None, Tables]:
    """Decoders, the campaign engine and collectors for every bus, and the scaling table the encoder
    needs (the same message and signal scaled differently on two buses is left out); raises
    DatabaseError (or CampaignError) before anything is swapped. `previous`: the running engine,
    whose unchanged campaigns keep their buffers, counters and open events. `kept`: the running
    config's table and what it was made from, taken as it is when the databases are the same (the
    decoders of an unchanged database are shared: agent.decode.decoder)."""
    decoders = {bus.name: FrameDecoder(load_bus_databases(cfg, bus)) for bus in cfg.buses}
    tables = tuple(decoder.by_id for decoder in decoders.values())
    watches = watches_of(cfg)  # the software update's guard reads live signals through the engine
    engine = CampaignEngine(cfg.campaigns, decoders, event_batches(batcher), previous=previous,
                            budget_bytes=cfg.campaign_buffer_max_bytes,
                            labels=cfg.collection.labels, watches=watches) if cfg.campaigns or watches else None
    if kept is not None and len(kept[0]) == len(tables) and all(a is b for a, b in zip(kept[0], tables, strict=True)):
        exact = kept[1]
    else:
        exact = scaling_table(decoders.values())
    collectors = {name: Collector(name, decoder, cfg.collection, batcher, counters.setdefault(name, BusCounters()),
                                  exact, engine) for name, decoder in decoders.items()}
    return collectors, exact, engine, tables


def scaling_table(decoders: Iterable[FrameDecoder]) -> Scaling:
    """(message, signal) -> (scale, offset) over every bus, leaving out a signal scaled two ways."""
    scaling: Scaling = {}
    ambiguous: set[tuple[str, str]] = set()
    for decoder in decoders:
        for dec in decoder.messages:
            for sig, sc in dec.scaling.items():
                if scaling.setdefault((dec.name, sig), sc) != sc:
                    ambiguous.add((dec.name, sig))
    return {key: sc for key, sc in scaling.items() if key not in ambiguous}


def event_batches(batcher: Batcher) -> Callable[[Event], None]:
    """Where finished campaign events go: batches of their own, at the campaign's priority, through
    the batcher's encoder and on to the store like any other batch."""
    def emit(event: Event) -> None:
        batcher.emit_event(Priority[event.priority], event.columns, event.header())
    return emit


@dataclass(slots=True)
class Pipeline:
    """One config's collectors and the batcher they feed; `counters` outlive config swaps."""

    config: AgentConfig
    batcher: Batcher
    collectors: dict[str, Collector]
    scaling: Scaling
    counters: dict[str, BusCounters] = field(default_factory=dict)
    campaigns: CampaignEngine | None = None  # None without campaigns: the collectors run as compiled
    tables: Tables = ()  # the message decoders `scaling` was made from

    def reconfigure(self, new: AgentConfig) -> None:
        """Swap `new` in between frames: open filters and batches of the old config are flushed first;
        campaigns removed or changed send their open events with what they have."""
        old = self.campaigns
        collectors, scaling, campaigns, tables = collectors_for(new, self.batcher, self.counters, old,
                                                                (self.tables, self.scaling))
        codec = codec_of(new)
        for collector in self.collectors.values():
            collector.flush()
        self.batcher.reconfigure(new.batching, codec, new.vehicle_id, scaling)
        self.config, self.collectors, self.scaling, self.campaigns = new, collectors, scaling, campaigns
        self.tables = tables
        if old is not None:
            old.retire(campaigns)

    def flush(self) -> None:
        """Close every filter's held value and every open batch now."""
        for collector in self.collectors.values():
            collector.flush()
        self.batcher.flush()

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.counters.values())


def build(cfg: AgentConfig, *, on_batch: Callable[[Batch], None],
          on_refused: Callable[[str, int], None] | None = None, codec: Codec | None = None) -> Pipeline:
    """The pipeline of `cfg`, closed batches going to `on_batch` (the agent: its store; the bench: a
    timed store). `codec` replaces the configured one (the bench times or captures it)."""
    counters: dict[str, BusCounters] = {}
    if on_refused is None:
        def on_refused(bus: str, samples: int) -> None:
            counters.setdefault(bus, BusCounters()).refused_values += samples
    batcher = Batcher(cfg.batching, codec or codec_of(cfg), vehicle=cfg.vehicle_id, on_batch=on_batch,
                      on_refused=on_refused)
    collectors, scaling, campaigns, tables = collectors_for(cfg, batcher, counters)
    batcher.scaling = scaling
    return Pipeline(cfg, batcher, collectors, scaling, counters, campaigns, tables)
