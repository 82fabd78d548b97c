"""Code generation for the collector: per-message Python source, compiled once, that decodes the
wanted signals, takes each through its filter's decision (`Filter.inline`) and appends what is kept
to the open batch's column lists. Straight-line code per message instead of a call per signal is
what makes the collector cheaper than cantools' bare decode; tests/test_collect_exact.py holds it to
cantools' decode plus each signal's own filter.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Sequence
from functools import partial

from cantools.database.can.signal import Signal

from agent.collect.policy import Filter, Period
from agent.decode.fast import Page, compile_values, values_code
from agent.model import Priority

ColumnKey = tuple[str, str, str]  # bus, message, signal


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
    return [f"_c = S{i}.ts", "if _c is None:", f"    _c = _bind(S{i})", f"S{i}.vs.append({value})",
            f"_c.append({et})", "kept += 1"]  # the value first: if it raises, the columns stay aligned


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
    held_ids = {id(slot) for frames in held for slot in frames.slots}
    free = [i for i, slot in enumerate(slots) if id(slot) not in held_ids]
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
