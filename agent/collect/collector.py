"""The collector: frames of one bus in, kept samples out to the batcher.

Built per config and per bus: for every wanted frame id, one *step* function, resolved at the id's
first frame (so a config swap costs only the policy lookup, whatever the database's size). For a
plain message it is generated straight-line code (`agent.collect.codegen`) (skip if the wanted bits did not change, decode
only the wanted signals, each filter's decision inlined, kept values appended to the open batch's
columns); multiplexed messages and anything cantools decodes take the generic step. Frames whose
id nobody asked for are dropped before decoding (and, on SocketCAN, by the kernel's receive filter
built from `wanted_ids`).
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

import structlog
from cantools.database.errors import DecodeError

from agent.batcher import Batcher
from agent.codec import Scaling
from agent.collect.codegen import HeldFrames, Slot, held_frames
from agent.collect.policy import OnChange, make_filter, policy_resolver
from agent.compiler import Sampler, Step, StepHook, compile_sampler, compile_step, source_of
from agent.config import CollectionConfig
from agent.decode.decoder import FrameDecoder, MessageDecoder, ShortFrameError
from agent.decode.fast import FastDecoder, one_to_one, scaling_of
from agent.model import TIME_MAX, TIME_MIN, Frame

if TYPE_CHECKING:
    from agent.campaigns.engine import CampaignEngine

log = structlog.get_logger()


@dataclass(slots=True)
class BusCounters:
    """What a bus did, for status and the twin: monotonically increasing counts."""

    frames: int = 0
    error_frames: int = 0
    unknown_ids: int = 0
    filtered: int = 0
    decode_errors: int = 0
    samples: int = 0
    refused_timestamps: int = 0  # frames whose time is not between 1980 and 2200 (or not finite)
    refused_values: int = 0      # samples the encoder cannot carry exactly (agent.codec.Codec.admit)
    unknown_id_set: set[int] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {"frames": self.frames, "error_frames": self.error_frames, "unknown_ids": self.unknown_ids,
                "unknown_distinct_ids": len(self.unknown_id_set), "filtered": self.filtered,
                "decode_errors": self.decode_errors, "samples": self.samples,
                "refused_timestamps": self.refused_timestamps, "refused_values": self.refused_values}


@dataclass(slots=True)
class _Plan:
    """What to do with one frame id, resolved once per config."""

    decoder: MessageDecoder
    slots: dict[str, Slot]                 # by signal name (shared by every multiplexer page)
    fast: FastDecoder | None               # None: decode with cantools
    samplers: dict[int | None, Sampler]    # multiplexed fast path: generated filter + append code per page
    change_only: bool                      # every filter is OnChange: an unchanged payload emits nothing
    mask: int                              # payload bits of the wanted signals
    length: int
    labels: bool
    exact: Step | None = None              # plain message: its generated step (for payloads of its length)
    held: list[HeldFrames] = field(default_factory=list)  # plain message: Period slots downsampled on frames


class Collector:
    """Decodes and samples the frames of one bus; appends kept samples to the batcher's columns.

    Per frame: one dict lookup and one call of the id's step (see the module docstring); most
    frames of a car stop at the step's first lines, because nothing they carry changed.
    """

    def __init__(self, bus: str, decoder: FrameDecoder, cfg: CollectionConfig, batcher: Batcher,
                 counters: BusCounters | None = None, scaling: Scaling | None = None,
                 campaigns: CampaignEngine | None = None) -> None:
        """`scaling`: the table the batcher's codec will get; signals whose scaling it holds exactly
        go to the batch as raw integers (RawValues), the rest as physical values. `campaigns`: the
        ids a campaign reads get their frames handed to it too (`_with_campaign`); without
        campaigns every step is exactly what the policy compiled."""
        self.bus = bus
        self.batcher = batcher
        self.counters = counters or BusCounters()
        self.plans: dict[int, _Plan] = {}
        self.steps: dict[int, Step] = {}
        self.last_payload: dict[int, int] = {}
        self.known_ids = set(decoder.by_id)
        self._generation = -1
        self._labels, self._scaling = cfg.labels, scaling
        self._names = Counter(dec.name for dec in decoder.by_id.values())
        # (monotonic clock, process CPU seconds) when a first frame of an id kept a sample: the
        # agent's start-up figure (first_frame_decoded); set only on a first frame, not per frame
        self.first_sample: tuple[float, float] | None = None
        # ids with a wanted signal (the first one found says so); the policies of all their signals,
        # and their slots (filters, columns), come at the id's first frame with its plan (`_slots_of`):
        # a swap of a production car resolved 6,480 signals against every rule and made as many
        # filters, most for ids the car may never send (issue 19)
        self._wanted: dict[int, MessageDecoder] = {}
        self._slots: dict[int, dict[str, Slot]] = {}
        self._resolve = resolve = policy_resolver(cfg)
        for fid, dec in decoder.by_id.items():
            if any(resolve(dec.name, sig).policy != "exclude" for sig in dec.signals):
                self._wanted[fid] = dec
                self.steps[fid] = partial(self._first_step, fid)
        self._campaigns = campaigns
        self._campaign_ids = {fid for fid in decoder.by_id
                              if campaigns is not None and (bus, fid) in campaigns.message_keys}
        for fid in self._campaign_ids - set(self._wanted):  # wanted ids get theirs when built
            self.steps[fid] = self._with_campaign(fid, None)

    def build_all(self) -> None:
        """Compile every wanted id's plan now (the benchmark times frames, not compiling)."""
        for fid in self._wanted:
            if fid not in self.plans:
                self._build(fid)

    def _first_step(self, fid: int, t: float, data: bytes) -> int:
        """The first frame of an id: compile its plan now (a database of 1,500 messages of which a
        car sends 200 compiles 200; a config swap compiles nothing), then step as usual."""
        try:
            step = self._build(fid)
        except Exception as exc:  # noqa: BLE001 - a message the compiler cannot handle: cantools decodes it
            log.error("compile_failed", bus=self.bus, frame_id=fid, message=self._wanted[fid].name,
                      error=repr(exc), action="decoding this message with cantools")
            step = self._build(fid, compiled=False)
        kept = step(t, data)
        if kept and self.first_sample is None:
            self.first_sample = (time.monotonic(), time.process_time())
        return kept

    def _slots_of(self, fid: int) -> dict[str, Slot]:
        """The wanted signals of `fid` with their filters, made once per config (a rebuild after a
        failed step keeps them: filters hold state)."""
        slots = self._slots.get(fid)
        if slots is None:
            dec = self._wanted[fid]
            slots = self._slots[fid] = {}
            for sig in dec.signals:
                policy = self._resolve(dec.name, sig)
                factory = make_filter(policy)
                if factory is not None:
                    slots[sig] = Slot(factory(), policy.priority_level, (self.bus, dec.name, sig), sig)
        return slots

    def _build(self, fid: int, compiled: bool = True) -> Step:
        """Resolve what to do with frames of `fid` (`compiled`: the fast path, else cantools); installs
        the plan and the step (with the campaigns' work, if any) only once both are built, and
        returns the step."""
        dec = self._wanted[fid]
        slots = self._slots_of(fid)
        scaling = self._scaling
        fast: FastDecoder | None = None
        if compiled:
            with contextlib.suppress(NotImplementedError):  # nested multiplexing: cantools
                fast = FastDecoder(dec.message, list(slots))
        label = dec.label if self._labels else None
        pages = {key: [slots[s.name] for s in page.signals] for key, page in fast.pages.items()} if fast else {}
        change_only = fast is not None and all(type(e.filt) is OnChange for e in slots.values())
        plain = fast is not None and fast.mux is None and None in fast.pages  # gets a generated step
        name = f"{self.bus}:{dec.name}"
        samplers = {} if plain else {key: compile_sampler(page, self._bind, label, f"{name} page {key}")
                                     for key, page in pages.items()}
        plan = _Plan(dec, slots, fast, samplers, change_only, fast.mask if fast else 0, dec.length, self._labels)
        step: Step = partial(self._step, fid, plan)
        hook: StepHook | None = None
        for slot in slots.values():
            slot.raw = slot.compare_raw = False
        if plain:
            assert fast is not None
            signals = fast.pages[None].signals
            for sig in signals:
                slot = slots[sig.name]
                # one column per (bus, message, signal): a message name at two ids stays physical
                slot.raw = (label is None and not sig.is_float and slot.filt.emits_offered and scaling is not None
                            and self._names[dec.name] == 1 and scaling.get(slot.key[1:]) == scaling_of(sig))
                slot.compare_raw = slot.raw and one_to_one(sig)
            plan.held = held_frames(pages[None], signals, dec.length, name)
            held = {slot.signal for frames in plan.held for slot in frames.slots}
            if fid in self._campaign_ids and self._campaigns is not None:  # inlined: one call a frame
                hook = self._campaigns.hook_for(self.bus, fid, [s.name for s in signals if s.name not in held],
                                                change_only)
            plan.exact = step = compile_step(pages[None], fast.pages[None], dec.length,
                                             plan.mask if change_only else None, self._bind, label, step, plan.held,
                                             name, hook)
        if hook is None:
            step = self._with_campaign(fid, step)
        self.plans[fid], self.steps[fid] = plan, step
        return step

    def generated(self, message: str) -> list[tuple[str, str]]:
        """(name, source) of each function generated for a message's frames (`vehicle-agent debug
        codegen`); empty if no signal of it is wanted, a note if cantools decodes it."""
        out = []
        for fid, dec in self._wanted.items():
            if dec.name != message:
                continue
            plan = self.plans.get(fid)
            if plan is None:
                self._build(fid)
                plan = self.plans[fid]
            if plan.fast is None:
                out.append((f"{self.bus}:{message}", "# decoded with cantools (nested multiplexing, or a layout "
                                                     "cantools cannot unpack): nothing generated\n"))
                continue
            functions = [plan.exact, plan.fast.mux_value, *(page.values for page in plan.fast.pages.values()),
                         *(frames.values for frames in plan.held), *plan.samplers.values()]
            out += [(fn.__code__.co_filename, source_of(fn)) for fn in functions if fn is not None]
        return out

    def _with_campaign(self, fid: int, step: Step | None) -> Step:
        """The step of an id, wrapped with the campaign engine's work for the frame first if a
        campaign reads it and the step does not inline that work (its ring, its condition inputs;
        agent.campaigns.feedgen); an id only campaigns want keeps no samples here."""
        if fid not in self._campaign_ids or self._campaigns is None:
            assert step is not None
            return step
        wrapped = self._campaigns.step_for(self.bus, fid, step)
        assert wrapped is not None
        return wrapped

    @property
    def wanted_ids(self) -> set[int]:
        """Frame ids with at least one wanted signal or campaign (the basis of kernel receive filters)."""
        return set(self._wanted) | self._campaign_ids

    def _rebind(self) -> None:
        """The batcher closed a batch: column lists handed out before belong to it now."""
        for plan in self.plans.values():
            for slot in plan.slots.values():
                slot.ts = slot.vs = None
        self._generation = self.batcher.generation

    def process(self, frames: list[Frame]) -> None:
        """The hot path: decode and sample a batch of frames.

        A frame whose timestamp is not a time between 1980 and 2200 (a replayed log's garbage, a
        clock far off) is refused and counted, before any filter or batch sees it. A step that
        raises (a bug, or a layout nobody foresaw) costs only its frame: the id is decoded with
        cantools from then on, and the rest of the list goes on.
        """
        c = self.counters
        c.frames += len(frames)
        if self._generation != self.batcher.generation:
            self._rebind()
        steps = self.steps
        kept = 0
        lo, hi = TIME_MIN, TIME_MAX
        rest: list[Frame] = frames
        while rest:
            try:
                for t, fid, data, _fd, is_error in rest:
                    step = steps.get(fid)
                    if step is None or is_error:
                        self._count_unwanted(fid, is_error)
                    elif lo <= t <= hi:
                        kept += step(t, data)
                    else:
                        self._refuse_time(fid, t)
                rest = []
            except Exception as exc:  # noqa: BLE001 - one frame's failure must not stop the bus
                # the failing frame: its own payload and time objects (no per-frame index on the hot path)
                at = next((i for i, f in enumerate(rest) if f[2] is data and f[0] is t), len(rest) - 1)
                self._step_failed(fid, exc)
                rest = rest[at + 1:]
        if kept:
            c.samples += kept
            self.batcher.settle(kept)

    def _refuse_time(self, fid: int, t: float) -> None:
        c = self.counters
        c.refused_timestamps += 1
        if c.refused_timestamps <= 10 or c.refused_timestamps % 1000 == 0:
            log.warning("timestamp_refused", bus=self.bus, frame_id=fid, t=repr(t), count=c.refused_timestamps,
                        reason="not a time between 1980 and 2200")

    def _step_failed(self, fid: int, exc: Exception) -> None:
        """A frame whose step raised: counted as a decode error; its id falls back to cantools."""
        self.counters.decode_errors += 1
        if self.plans.get(fid) is not None and self.plans[fid].fast is not None:
            log.error("step_failed", bus=self.bus, frame_id=fid, message=self._wanted[fid].name, error=repr(exc),
                      exc_info=exc, action="decoding this message with cantools")
            self.last_payload.pop(fid, None)
            self._build(fid, compiled=False)
        elif self.counters.decode_errors <= 10 or self.counters.decode_errors % 1000 == 0:
            log.warning("decode_error", bus=self.bus, frame_id=fid, reason=repr(exc), count=self.counters.decode_errors)

    def _step(self, fid: int, plan: _Plan, t: float, data: bytes) -> int:
        """The generic step: multiplexed messages, cantools-decoded ones, payloads of another length."""
        if len(data) > plan.length:  # e.g. a CAN FD frame padded to its DLC: the DBC's bytes count
            data = bytes(data[:plan.length])
            if plan.exact is not None:
                return plan.exact(t, data)
        last = self.last_payload
        if plan.change_only and len(data) == plan.length:
            bits = int.from_bytes(data, "big") & plan.mask
            if last.get(fid) == bits:
                return 0
            last[fid] = bits
        try:
            if len(data) < plan.length:
                raise ShortFrameError(f"{plan.decoder.name} needs {plan.length} bytes, frame has {len(data)}")
            if plan.fast is None:
                return self._sample(plan, t, plan.decoder.decode(data))
            decoded = plan.fast.decode(data)
        except (ShortFrameError, ValueError, KeyError, DecodeError, struct.error, ArithmeticError) as exc:  # short frames, undefined mux values
            self._decode_error(fid, exc)
            last.pop(fid, None)
            return 0
        return 0 if decoded is None else plan.samplers[decoded[0]](t, decoded[1])

    def _bind(self, slot: Slot) -> list[float]:
        """Fetch a slot's column lists from the open batch (first sample since the batch opened)."""
        slot.ts, slot.vs = self.batcher.column(slot.priority, slot.key, slot.raw)
        return slot.ts

    def _sample(self, plan: _Plan, t: float, values: dict[str, float | int]) -> int:
        """The cantools fallback: offer each wanted value to its filter."""
        kept = 0
        for name, slot in plan.slots.items():
            if name not in values:
                continue
            emit = slot.filt.offer(t, values[name])
            if emit is not None:
                ts = slot.ts if slot.ts is not None else self._bind(slot)
                slot.vs.append(plan.decoder.label(slot.signal, emit[1]) if plan.labels else emit[1])  # type: ignore[union-attr]
                ts.append(emit[0])
                kept += 1
        return kept

    def _count_unwanted(self, fid: int, is_error: bool) -> None:
        c = self.counters
        if is_error:
            c.error_frames += 1
        elif fid in self.known_ids:
            c.filtered += 1
        else:
            c.unknown_ids += 1
            if len(c.unknown_id_set) < 4096:
                c.unknown_id_set.add(fid)

    def _decode_error(self, fid: int, exc: Exception) -> None:
        c = self.counters
        c.decode_errors += 1
        if c.decode_errors <= 10 or c.decode_errors % 1000 == 0:
            log.warning("decode_error", bus=self.bus, frame_id=fid, reason=str(exc), count=c.decode_errors)

    def flush(self) -> None:
        """Emit what downsampling filters still hold (on shutdown or config swap)."""
        kept = 0
        for plan in self.plans.values():
            emits = [(slot, emit) for slot in plan.slots.values() if (emit := slot.filt.flush()) is not None]
            for frames in plan.held:
                if (frame := frames.period.flush()) is not None:
                    payload = cast(bytes, frame[1])  # a held frame's Period holds the frame's payload
                    emits += [(slot, (frame[0], v)) for slot, v in zip(frames.slots, frames.values(payload), strict=True)]
            for slot, (t, value) in emits:
                kept += 1
                ts, vs = self.batcher.column(slot.priority, slot.key, slot.raw)
                vs.append(plan.decoder.label(slot.signal, value) if plan.labels else value)
                ts.append(t)
        if kept:
            self.counters.samples += kept
            self.batcher.settle(kept)
