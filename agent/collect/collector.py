"""The collector: frames of one bus in, kept samples out to the batcher.

Built per config and per bus: for every wanted frame id, the decoder and one filter per wanted
signal, resolved once. Frames whose id nobody asked for are dropped before decoding (and, on
SocketCAN, by the kernel's receive filter built from `wanted_ids`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.collect.policy import Filter, make_filter, resolve_policy
from agent.config import CollectionConfig
from agent.decode.decoder import FrameDecoder, MessageDecoder, ShortFrameError
from agent.model import Frame, Priority

log = structlog.get_logger()

ColumnKey = tuple[str, str, str]  # bus, message, signal
AddSample = Callable[[Priority, ColumnKey, float, object], None]


@dataclass(slots=True)
class BusCounters:
    """What a bus did, for status and the twin: monotonically increasing counts."""

    frames: int = 0
    error_frames: int = 0
    unknown_ids: int = 0
    filtered: int = 0
    decode_errors: int = 0
    samples: int = 0
    unknown_id_set: set[int] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {"frames": self.frames, "error_frames": self.error_frames, "unknown_ids": self.unknown_ids,
                "unknown_distinct_ids": len(self.unknown_id_set), "filtered": self.filtered,
                "decode_errors": self.decode_errors, "samples": self.samples}


@dataclass(slots=True)
class _Plan:
    decoder: MessageDecoder
    signals: list[tuple[str, Filter, Priority, ColumnKey]]
    labels: bool


class Collector:
    """Decodes and samples the frames of one bus; emits kept samples through `add`."""

    def __init__(self, bus: str, decoder: FrameDecoder, cfg: CollectionConfig, add: AddSample,
                 counters: BusCounters | None = None) -> None:
        self.bus = bus
        self.add = add
        self.counters = counters or BusCounters()
        self.plans: dict[int, _Plan] = {}
        self.known_ids = set(decoder.by_id)
        for fid, dec in decoder.by_id.items():
            signals = []
            for sig in dec.signals:
                policy = resolve_policy(cfg, dec.name, sig)
                factory = make_filter(policy)
                if factory is not None:
                    signals.append((sig, factory(), policy.priority_level, (bus, dec.name, sig)))
            if signals:
                self.plans[fid] = _Plan(dec, signals, cfg.labels)

    @property
    def wanted_ids(self) -> set[int]:
        """Frame ids with at least one wanted signal (the basis of kernel receive filters)."""
        return set(self.plans)

    def process(self, frames: list[Frame]) -> None:
        """The hot path: decode and sample a batch of frames."""
        c = self.counters
        c.frames += len(frames)
        plans, add = self.plans, self.add
        kept = 0
        for frame in frames:
            plan = plans.get(frame.id)
            if plan is None:
                if frame.is_error:
                    c.error_frames += 1
                elif frame.id in self.known_ids:
                    c.filtered += 1
                else:
                    c.unknown_ids += 1
                    if len(c.unknown_id_set) < 4096:
                        c.unknown_id_set.add(frame.id)
                continue
            try:
                values = plan.decoder.decode(frame.data)
            except (ShortFrameError, ValueError, KeyError) as exc:  # cantools: bad mux ids, bad sizes
                c.decode_errors += 1
                if c.decode_errors <= 10 or c.decode_errors % 1000 == 0:
                    log.warning("decode_error", bus=self.bus, frame_id=frame.id, reason=str(exc),
                                count=c.decode_errors)
                continue
            t = frame.t
            for sig, filt, prio, key in plan.signals:
                v = values.get(sig)
                if v is None:
                    continue
                emit = filt.offer(t, v)
                if emit is not None:
                    kept += 1
                    add(prio, key, emit[0], plan.decoder.label(sig, emit[1]) if plan.labels else emit[1])
        c.samples += kept

    def flush(self) -> None:
        """Emit what downsampling filters still hold (on shutdown or config swap)."""
        for plan in self.plans.values():
            for sig, filt, prio, key in plan.signals:
                emit = filt.flush()
                if emit is not None:
                    self.counters.samples += 1
                    self.add(prio, key, emit[0], plan.decoder.label(sig, emit[1]) if plan.labels else emit[1])
