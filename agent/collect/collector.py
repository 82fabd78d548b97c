"""The collector: frames of one bus in, kept samples out to the batcher.

Built per config and per bus: for every wanted frame id, one *step* function, resolved at the id's
first frame (so a config swap costs only the policy lookup, whatever the database's size). For a
plain message it is generated straight-line code (skip if the wanted bits did not change, decode
only the wanted signals, each filter's decision inlined, kept values appended to the open batch's
columns); multiplexed messages and anything cantools decodes take the generic step. Frames whose
id nobody asked for are dropped before decoding (and, on SocketCAN, by the kernel's receive filter
built from `wanted_ids`).
"""

from __future__ import annotations

import contextlib
import functools
import re
import struct
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog
from cantools.database.can.signal import Signal
from cantools.database.errors import DecodeError

from agent.batcher import Batcher
from agent.codec import Scaling
from agent.collect.policy import Filter, OnChange, Period, make_filter, policy_resolver
from agent.config import CollectionConfig
from agent.decode.decoder import FrameDecoder, MessageDecoder, ShortFrameError
from agent.decode.fast import FastDecoder, Page, compile_values, one_to_one, scaling_of, values_code
from agent.model import Frame, Priority

log = structlog.get_logger()

ColumnKey = tuple[str, str, str]  # bus, message, signal


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


class Slot:
    """A wanted signal: its filter, and where its kept samples go (the open batch's column lists)."""

    __slots__ = ("filt", "priority", "key", "signal", "raw", "compare_raw", "ts", "vs")

    def __init__(self, filt: Filter, priority: Priority, key: ColumnKey, signal: str) -> None:
        self.filt, self.priority, self.key, self.signal = filt, priority, key, signal
        self.raw = False  # its column holds raw integers (agent.codec.RawValues)
        self.compare_raw = False  # its filter may decide on the raw integer (one to one with the value)
        self.ts: list[float] | None = None  # fetched from the batcher on the first sample of a batch
        self.vs: list | None = None


Sampler = Callable[[float, tuple], int]  # (time, decoded values of a page) -> samples kept
Step = Callable[[float, bytes], int]     # (time, payload) -> samples kept
Label = Callable[[str, float | int], object]


class HeldFrames:
    """Period downsampling of a plain message's signals that share one period, done on whole frames.

    A `Period` filter per signal holds the latest value of each period, and in a plain message
    every signal of one period holds a value of the same latest frame. So the compiled step offers
    the *payload* to one `Period` and decodes the held payload only when its period closes: wheel
    speeds sent at 100 Hz and kept at 10 Hz are decoded 10 times a second, not 100. The samples are
    exactly those of a `Period` per signal (tests/test_collect_exact.py); the slots' own filters stay
    empty.
    """

    __slots__ = ("period", "slots", "values")

    def __init__(self, period: Period, slots: list[Slot], values: Callable[[bytes], tuple]) -> None:
        self.period, self.slots, self.values = period, slots, values


def _keep(i: int, slot: Slot, label: Label | None, et: str, ev: str) -> list[str]:
    """Lines appending a kept sample (time `et`, value `ev`) to slot `i`'s column; counts into `kept`."""
    if slot.raw:  # the value kept is the one offered (Filter.emits_offered): append its raw integer
        assert ev == f"v{i}", "a raw column gets only the value just decoded"
        value = f"r{i}"
    else:
        value = f"_label({slot.signal!r}, {ev})" if label is not None else ev
    return [f"_c = S{i}.ts", "if _c is None:", f"    _c = _bind(S{i})", f"_c.append({et})",
            f"S{i}.vs.append({value})", "kept += 1"]


def _decide(i: int, slot: Slot, label: Label | None, env: dict[str, object], raw: bool = False) -> list[str]:
    """Lines taking value v{i} through slot `i`'s filter decision (`Filter.inline`) and keeping what
    it keeps; with `raw`, the filter may compare the raw integer r{i} instead (one to one with v{i})."""
    env[f"F{i}"], env[f"S{i}"] = slot.filt, slot
    return slot.filt.inline(f"F{i}", f"v{i}", partial(_keep, i, slot, label), f"r{i}" if raw else None)


def _define(name: str, args: str, body: list[str], env: dict[str, object]) -> Callable:
    exec(_compiled("\n".join([f"def {name}({args}):", *("    " + line for line in body)])), env)  # noqa: S102
    return env[name]  # type: ignore[return-value]  # names and numbers only; signal names go in as repr()


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> types.CodeType:
    """Compiling is most of what building a message's step costs (~0.6 ms); a config swap that keeps
    a message's policies generates the same source, bound to the new filters only when run."""
    return compile(source, "<collector>", "exec")


def compile_sampler(slots: list[Slot], bind: Callable[[Slot], list[float]], label: Label | None) -> Sampler:
    """Generated code for one page of a multiplexed message: its decoded values through the filters."""
    env: dict[str, object] = {"_bind": bind, "_label": label}
    unpack = f"{', '.join(f'v{i}' for i in range(len(slots)))}, = values"
    decide = [line for i, slot in enumerate(slots) for line in _decide(i, slot, label, env)]
    return _define("sample", "t, values", [unpack, "kept = 0", *decide, "return kept"], env)


def compile_step(slots: list[Slot], page: Page, length: int, mask: int | None, bind: Callable[[Slot], list[float]],
                 label: Label | None, other: Step, held: Sequence[HeldFrames] = ()) -> Step:
    """Generated code for a plain message (`page`: its wanted signals, in `slots` order): (when every
    filter is on-change) skip a payload whose wanted bits did not change, decode the wanted signals,
    filter, append. Payloads of another length go to `other` (the generic step: short frames are
    errors, longer ones are cut).

    `held`: slots downsampled on whole frames (HeldFrames); the step decodes only the other slots'
    signals, so when every slot is held it decodes nothing until a period closes.
    """
    env: dict[str, object] = {"_bind": bind, "_label": label, "_other": other, "_prev": [None],
                              "_from_bytes": int.from_bytes}
    body = [f"if len(data) != {length}:", "    return _other(t, data)"]
    if mask is not None:
        body += [f"bits = _from_bytes(data, 'big') & {mask}", "if bits == _prev[0]:", "    return 0",
                 "_prev[0] = bits"]
    index = {id(slot): i for i, slot in enumerate(slots)}
    decide = ["kept = 0"]
    for g, frames in enumerate(held):
        env[f"P{g}"], env[f"D{g}"] = frames.period, frames.values
        env.update({f"S{index[id(slot)]}": slot for slot in frames.slots})

        def keep_frame(et: str, ev: str, g: int = g, frames: HeldFrames = frames) -> list[str]:
            return [f"_hv = D{g}({ev})", *(line for k, slot in enumerate(frames.slots)
                                           for line in _keep(index[id(slot)], slot, label, et, f"_hv[{k}]"))]

        decide += frames.period.inline(f"P{g}", "data", keep_frame)
    free = [i for i, slot in enumerate(slots) if not any(slot in frames.slots for frames in held)]
    for i in free:
        decide += _decide(i, slots[i], label, env, slots[i].compare_raw)
    if free:
        code = page.code if not held else values_code([page.signals[i] for i in free], length)
        env.update(code.env)
        body += code.lines
        decided = "\n".join(decide)
        for i, raw, value in zip(free, code.raws, code.values, strict=True):
            if slots[i].raw:
                body.append(f"r{i} = {raw}")
                value = value.replace(raw, f"r{i}", 1)  # every value expression starts with its raw
            if re.search(rf"\bv{i}\b", decided):  # a filter comparing raws needs no scaled value
                body.append(f"v{i} = {value}")
    return _define("step", "t, data", [*body, *decide, "return kept"], env)


def held_frames(slots: list[Slot], signals: Sequence[Signal], length: int) -> list[HeldFrames]:
    """The plain message's Period slots grouped by period, each group decoding its held frame."""
    by_period: dict[float, list[tuple[Slot, Signal]]] = {}
    for slot, sig in zip(slots, signals, strict=True):
        if type(slot.filt) is Period:
            by_period.setdefault(slot.filt.period, []).append((slot, sig))
    return [HeldFrames(Period(period), [slot for slot, _ in members],
                       compile_values(values_code([sig for _, sig in members], length)))
            for period, members in by_period.items()]


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
                 counters: BusCounters | None = None, scaling: Scaling | None = None) -> None:
        """`scaling`: the table the batcher's codec will get; signals whose scaling it holds exactly
        go to the batch as raw integers (RawValues), the rest as physical values."""
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
        self._wanted: dict[int, tuple[MessageDecoder, dict[str, Slot]]] = {}
        resolve = policy_resolver(cfg)
        for fid, dec in decoder.by_id.items():
            slots: dict[str, Slot] = {}
            for sig in dec.signals:
                policy = resolve(dec.name, sig)
                factory = make_filter(policy)
                if factory is not None:
                    slots[sig] = Slot(factory(), policy.priority_level, (bus, dec.name, sig), sig)
            if slots:
                self._wanted[fid] = (dec, slots)
                self.steps[fid] = partial(self._first_step, fid)

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
            log.error("compile_failed", bus=self.bus, frame_id=fid, message=self._wanted[fid][0].name,
                      error=repr(exc), action="decoding this message with cantools")
            step = self._build(fid, compiled=False)
        return step(t, data)

    def _build(self, fid: int, compiled: bool = True) -> Step:
        """Resolve what to do with frames of `fid` (`compiled`: the fast path, else cantools); installs
        the plan and the step only once both are built, and returns the step."""
        dec, slots = self._wanted[fid]
        scaling = self._scaling
        fast: FastDecoder | None = None
        if compiled:
            with contextlib.suppress(NotImplementedError):  # nested multiplexing: cantools
                fast = FastDecoder(dec.message, list(slots))
        label = dec.label if self._labels else None
        pages = {key: [slots[s.name] for s in page.signals] for key, page in fast.pages.items()} if fast else {}
        change_only = fast is not None and all(type(e.filt) is OnChange for e in slots.values())
        plain = fast is not None and fast.mux is None and None in fast.pages  # gets a generated step
        samplers = {} if plain else {key: compile_sampler(page, self._bind, label) for key, page in pages.items()}
        plan = _Plan(dec, slots, fast, samplers, change_only, fast.mask if fast else 0, dec.length, self._labels)
        step: Step = partial(self._step, fid, plan)
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
            plan.held = held_frames(pages[None], signals, dec.length)
            plan.exact = step = compile_step(pages[None], fast.pages[None], dec.length,
                                             plan.mask if change_only else None, self._bind, label, step, plan.held)
        self.plans[fid], self.steps[fid] = plan, step
        return step

    @property
    def wanted_ids(self) -> set[int]:
        """Frame ids with at least one wanted signal (the basis of kernel receive filters)."""
        return set(self._wanted)

    def _rebind(self) -> None:
        """The batcher closed a batch: column lists handed out before belong to it now."""
        for plan in self.plans.values():
            for slot in plan.slots.values():
                slot.ts = slot.vs = None
        self._generation = self.batcher.generation

    def process(self, frames: list[Frame]) -> None:
        """The hot path: decode and sample a batch of frames."""
        c = self.counters
        c.frames += len(frames)
        if self._generation != self.batcher.generation:
            self._rebind()
        steps = self.steps
        kept = 0
        for t, fid, data, _fd, is_error in frames:
            step = steps.get(fid)
            if step is None or is_error:
                self._count_unwanted(fid, is_error)
                continue
            kept += step(t, data)
        if kept:
            c.samples += kept
            self.batcher.settle(kept)

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
        except (ShortFrameError, ValueError, KeyError, DecodeError, struct.error) as exc:  # short frames, undefined mux values
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
                ts.append(emit[0])
                slot.vs.append(plan.decoder.label(slot.signal, emit[1]) if plan.labels else emit[1])  # type: ignore[union-attr]
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
                    emits += [(slot, (frame[0], v)) for slot, v in zip(frames.slots, frames.values(frame[1]), strict=True)]
            for slot, (t, value) in emits:
                kept += 1
                ts, vs = self.batcher.column(slot.priority, slot.key, slot.raw)
                ts.append(t)
                vs.append(plan.decoder.label(slot.signal, value) if plan.labels else value)
        if kept:
            self.counters.samples += kept
            self.batcher.settle(kept)
