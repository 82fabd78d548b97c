"""The compiler of the hot path: every line of Python the agent generates is written here.

Four kinds of function are generated, once per config and message (agent.decode.fast,
agent.collect.collector and the campaign engine ask for them): the *values* of a page (unpack the
payload, scale each wanted signal), a plain message's *step* (skip an unchanged payload, decode,
take each value through its filter's decision, append what is kept to the open batch's columns;
with the campaigns' work inlined when a `StepHook` is given), a multiplexed page's *sampler* (the
same from values already decoded) and a *campaign step* of its own where the collector's step cannot
carry that work. Straight-line code per message instead of a call
per signal is what makes the collector cheaper than cantools' bare decode; tests/test_collect_exact.py
holds it to cantools' decode plus each filter's own `offer`.

The inputs are data: unpackers and scalings from agent.decode.fast, slots (filter, column, raw or
not) from agent.collect.codegen, each filter's `rule` (agent.collect.policy), which names the
decision this module writes out, and the campaigns' `StepHook` (agent.campaigns.feedgen: ring,
inputs, windows, runs with the checked source of their conditions). Names in the generated code:

    data, t            the payload and its time (the function's arguments)
    b, b1, l, l1       unpacked fields: big-endian formats on data, little-endian ones on data[::-1]
                       (b1, l1: a second group where fields overlap)
    r{i}, v{i}         slot i's raw integer and its scaled value
    S{i}, F{i}         slot i and its filter;  P{g}, D{g}: held frames g and their values function
    _c, _e, _l, _h     a column, an emitted sample, a last value, a held sample (scratch)
    kept               samples appended by this call
    _E, _R{j}, c{k}... a StepHook's own names (the campaign engine, its runs, the condition inputs
                       c{k} and their previous values q{k}, windows _W{k}_{n}), never a step's

Every source is compiled once per (name, source) and registered with `linecache` (compressed until read) under its name
(`<vehicle-agent step pt:EngineData>`), so tracebacks show its lines and `vehicle-agent debug
codegen` prints it (`source_of`).
"""

from __future__ import annotations

import functools
import hashlib
import linecache
import math
import re
import types
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from agent.collect.codegen import HeldFrames, Slot
    from agent.decode.fast import Page

Keep = Callable[[str, str], list[str]]  # (time expression, value expression) -> lines keeping that sample
Step = Callable[[float, bytes], int]     # (time, payload) -> samples kept
Sampler = Callable[[float, tuple], int]  # (time, decoded values of a page) -> samples kept
Label = Callable[[str, float | int], object]


# ------------------------------------------------------------------------------------ values
@dataclass(frozen=True, slots=True)
class Unpacker:
    """One compiled format reading some fields of the payload (agent.decode.fast lays them out)."""

    order: str                      # "big" (reads data) or "little" (reads data[::-1] unless `forward`)
    unpack: Callable[[bytes], tuple]
    forward: bool                   # a little-endian struct format: reads data as it is
    fields: tuple[int, ...]         # which signal (its index in the caller's list) each tuple item is
    format: str = ""                # what `unpack` is, for the reader of the source


@dataclass(frozen=True, slots=True)
class ValuesCode:
    """Source that computes a page's scaled values from `data`: statements, then one expression per
    signal (and the raw behind each). Steps build on it; `compile_values` wraps it in a function."""

    env: dict[str, object]
    lines: list[str]
    values: list[str]
    raws: list[str]      # the raw integer (or float) behind each value, before scaling


def literal(number: float) -> str:
    """Python source for a DBC factor or offset; `repr` of inf and nan is no Python literal."""
    return repr(number) if math.isfinite(number) else f"float('{number!r}')"


def scaled(raw: str, scale: float, offset: float) -> str:
    """The value expression of a raw: the raw itself where cantools' conversion is the identity."""
    return raw if scale == 1 and offset == 0 else f"{raw} * {literal(scale)} + {literal(offset)}"


def values_code(unpackers: Sequence[Unpacker], scalings: Sequence[tuple[float, float]]) -> ValuesCode:
    """Statements unpacking `data` and, per signal (in `scalings` order), its value and raw expressions."""
    env: dict[str, object] = {}
    lines: list[str] = []
    raws = [""] * len(scalings)
    counts = {"big": 0, "little": 0}
    for u in unpackers:
        n = counts[u.order]
        counts[u.order] += 1
        name, func = f"{u.order[0]}{n or ''}", f"_{u.order}{n or ''}"  # b, _big; l1, _little1; ...
        env[func] = u.unpack
        lines.append(f"{name} = {func}(data{'' if u.order == 'big' or u.forward else '[::-1]'})"
                     + (f"  # {u.format}" if u.format else ""))
        for i, signal in enumerate(u.fields):
            raws[signal] = f"{name}[{i}]"
    values = [scaled(raw, *scaling) for raw, scaling in zip(raws, scalings, strict=True)]
    return ValuesCode(env, lines, values, raws)


def compile_values(code: ValuesCode, name: str) -> Callable[[bytes], tuple]:
    """A function payload -> tuple of the scaled values `code` computes, in its order."""
    body = [*code.lines, f"return ({', '.join(code.values)}{',' if len(code.values) == 1 else ''})"]
    return define(f"values {name}", "decode", "data", body, dict(code.env))


# ------------------------------------------------------------------------ filter decisions
def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def decision(filt: Any, f: str, v: str, keep: Keep, raw: str | None = None) -> list[str]:
    """Lines deciding on value `v` at time `t` with the filter bound to the name `f`, by its `rule`.

    `raw`, when given, names the raw integer behind `v`, which the collector checked is one to one
    with it (`agent.decode.fast.one_to_one`): a rule that only compares values compares raws then
    and spares the scaling; such a filter holds raws, so a filter is used one way only (generated
    code with raws, or `offer`), never both. A rule this module does not know calls `offer`.
    """
    rule = filt.rule
    if rule == "all":
        return keep("t", v)
    if rule == "on_change":
        if raw is not None and not filt.deadband:  # integers: no NaN, and equal raws are equal values
            return [f"if {raw} != {f}.last:", f"    {f}.last = {raw}", *_indent(keep("t", v))]
        changed = f"{v} != _l and ({v} == {v} or _l == _l)"  # not equal, and not both NaN (None: the first)
        if filt.deadband:
            changed = f"_l is None or ({changed} and not abs({v} - _l) <= {f}.deadband)"
        return [f"_l = {f}.last", f"if {changed}:", f"    {f}.last = {v}", *_indent(keep("t", v))]
    if rule == "min_interval":
        return [f"if t >= {f}.next_t:", f"    {f}.next_t = t + {f}.interval", *_indent(keep("t", v))]
    if rule == "period":
        return [f"if t >= {f}.end:", f"    _h = {f}.held", f"    {f}.end = (t // {f}.period + 1) * {f}.period",
                f"    {f}.held = (t, {v})", "    if _h is not None:", *_indent(_indent(keep("_h[0]", "_h[1]"))),
                "else:", f"    {f}.held = (t, {v})"]
    return [f"_e = {f}.offer(t, {v})", "if _e is not None:", *_indent(keep("_e[0]", "_e[1]"))]


def uses_value(filt: Any, compare_raw: bool, keeps_raw: bool) -> bool:
    """Whether slot code reads the scaled value: a decision that only keeps it (or compares raws)
    reads it only to keep it, and a raw column keeps the raw."""
    if filt.rule in ("all", "min_interval") or (filt.rule == "on_change" and compare_raw and not filt.deadband):
        return not keeps_raw
    return True


# ---------------------------------------------------------------------- steps and samplers
@dataclass(slots=True)
class CampaignRun:
    """One trigger machine of the campaign engine a frame may have to evaluate, and when."""

    run: object                              # .active, .latched, .result(t, ok), .error(), .compute()
    reasons: list[tuple[str, int, int]]      # ("change" | "sample" | "window", input k, window n)
    condition: str | None                    # its checked source (names _v, _p, _w and MATH); None: compute()
    always: bool                             # trigger mode `always`: every evaluation reaches the run


@dataclass(slots=True)
class StepHook:
    """The campaign engine's per-frame work for one message, as data (agent.campaigns.feedgen lays it
    out): into the frame ring, the engine's timers, and the condition inputs' new values with the runs
    they trigger. Inlined in a plain message's step (`compile_step(hook=...)`) so a frame costs one
    call, or written as a step of its own (`compile_campaign_step`).

    In a step, the head (ring, timers) runs for every payload of the message's length, before the
    unchanged-payload check; the tail (inputs, runs) right after the decode, before the filters'
    decisions, on the values of `inputs` (signals the step decodes on every payload whose wanted bits
    changed, every payload without that check)."""

    engine: object                           # _E: .deadline, .due(t)
    names: dict[str, object]                 # what the conditions read: _v, _p, _w and MATH
    ring: tuple[Callable, Callable] | None = None  # the frame ring's time and payload appends
    inputs: tuple[str, ...] = ()             # the inputs' signal names, in the order of `slots`
    slots: list[int] = field(default_factory=list)             # each input's value slot in the engine
    windows: list[list[object]] = field(default_factory=list)  # per input k: its windows
    runs: list[CampaignRun] = field(default_factory=list)
    # a step of its own: the engine's generic feed (multiplexed, cantools), or this message decoded here
    feed: Callable | None = None
    length: int = 0
    generic: Callable | None = None          # a payload of another length (the generic feed, unbuffered)
    last_bits: list | None = None            # [bits last seen]: skip a payload whose input bits did not change
    mask: int = 0
    code: ValuesCode | None = None           # the inputs' values, in `slots` order


_CAMPAIGN_INPUT = re.compile(r"\b_v\[(\d+)\]")


def _hook_head(hook: StepHook, env: dict[str, object]) -> list[str]:
    """Lines for every frame: into the message's ring (if an event may need it), then the engine's
    timers (hold times, periods, closing events) once its time passes the next due time."""
    env.update({"_E": hook.engine, "_V": hook.names["_v"], "_P": hook.names["_p"],
                "_ARITH": (ArithmeticError, ValueError), **hook.names})
    lines = []
    if hook.ring is not None:  # two C-level appends, no object created (agent.campaigns.buffer)
        env["_ring_t"], env["_ring_data"] = hook.ring
        lines += ["_ring_t(t)", "_ring_data(data)"]
    return [*lines, "if t >= _E.deadline:", "    _E.due(t)"]


def _hook_tail(hook: StepHook, values: Sequence[str], env: dict[str, object]) -> list[str]:
    """Lines taking the inputs' new values (`values`: their expressions): update each, then evaluate
    each run that a changed one triggers, once, with the inputs read from the locals (names c{k},
    q{k}, cw{k}_{n}, _ok; the conditions' own _v, _p, _w)."""
    local = {i: f"c{k}" for k, i in enumerate(hook.slots)}
    lines: list[str] = []
    for k, (i, value) in enumerate(zip(hook.slots, values, strict=True)):
        lines += [f"c{k} = {value}", f"_P[{i}] = q{k} = _V[{i}]", f"_V[{i}] = c{k}"]
        for n, window in enumerate(hook.windows[k]):
            env[f"_W{k}_{n}"] = window
            lines.append(f"cw{k}_{n} = _W{k}_{n}.add(t, c{k})")
    why = {"change": "c{k} != q{k}", "sample": "True", "window": "cw{k}_{n}"}
    for j, run in enumerate(hook.runs):
        env[f"_R{j}"] = run.run
        when = " or ".join(dict.fromkeys(why[kind].format(k=k, n=n) for kind, k, n in run.reasons))
        lines.append(f"if ({when}) and _R{j}.active:")
        if run.condition is None:  # hysteresis: the run decides between its set and reset expressions
            lines.append(f"    _R{j}.result(t, _R{j}.compute())")
            continue
        # the condition inlined (its checked source); this message's inputs read from the locals just decoded
        source = _CAMPAIGN_INPUT.sub(lambda m: local.get(int(m.group(1)), m.group(0)), run.condition)
        lines += ["    try:", f"        _ok = not not ({source})", "    except TypeError:", "        _ok = False",
                  "    except _ARITH:", f"        _ok = _R{j}.error()"]
        lines += [f"    _R{j}.result(t, _ok)"] if run.always else [f"    if _ok is not _R{j}.latched:",
                                                                   f"        _R{j}.result(t, _ok)"]
    return lines


def compile_campaign_step(hook: StepHook, step: Step | None, name: str) -> Step:
    """A step of its own for a message campaigns read: the hook's work, then `step` (the collector's;
    None: 0). The inputs come from the engine's generic feed (`hook.feed`) or are decoded here,
    skipping a payload whose input bits did not change (unless every sample counts)."""
    env: dict[str, object] = {"_step": step}
    body = _hook_head(hook, env)
    done = "return _step(t, data)" if step is not None else "return 0"
    if hook.feed is not None:
        env["_feed"] = hook.feed
        body.append("_feed(t, data)")
    elif hook.code is not None:
        env["_generic"] = hook.generic
        body += [f"if len(data) != {hook.length}:", "    _generic(t, data)", f"    {done}"]
        if hook.last_bits is not None:
            env["_prev"], env["_from_bytes"] = hook.last_bits, int.from_bytes
            body += [f"bits = _from_bytes(data, 'big') & {hook.mask}", "if bits == _prev[0]:", f"    {done}",
                     "_prev[0] = bits"]
        env.update(hook.code.env)
        body += [*hook.code.lines, *_hook_tail(hook, hook.code.values, env)]
    return define(f"campaign step {name}", "step", "t, data", [*body, done], env)


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
    """Slot `i`'s decision on v{i} (on r{i} with `raw`), keeping what it keeps."""
    env[f"F{i}"], env[f"S{i}"] = slot.filt, slot
    return decision(slot.filt, f"F{i}", f"v{i}", functools.partial(_keep, i, slot, label), f"r{i}" if raw else None)


def compile_sampler(slots: list[Slot], bind: Callable[[Slot], list[float]], label: Label | None, name: str) -> Sampler:
    """Generated code for one page of a multiplexed message: its decoded values through the filters."""
    env: dict[str, object] = {"_bind": bind, "_label": label}
    unpack = f"{', '.join(f'v{i}' for i in range(len(slots)))}, = values"
    decide = [line for i, slot in enumerate(slots) for line in _decide(i, slot, label, env)]
    return define(f"sampler {name}", "sample", "t, values", [unpack, "kept = 0", *decide, "return kept"], env)


def compile_step(slots: list[Slot], page: Page, length: int, mask: int | None, bind: Callable[[Slot], list[float]],
                 label: Label | None, other: Step, held: Sequence[HeldFrames] = (), name: str = "",
                 hook: StepHook | None = None) -> Step:
    """Generated code for a plain message (`page`: its wanted signals, in `slots` order): (when every
    filter is on-change) skip a payload whose wanted bits did not change, decode the wanted signals,
    filter, append. Payloads of another length go to `other` (the generic step: short frames are
    errors, longer ones are cut and come back here).

    `held`: slots downsampled on whole frames (HeldFrames); the step decodes only the other slots'
    signals, so when every slot is held it decodes nothing until a period closes. `hook`: work
    inlined for another part (StepHook); its inputs must be among the signals decoded here.
    """
    env: dict[str, object] = {"_bind": bind, "_label": label, "_other": other, "_prev": [None],
                              "_from_bytes": int.from_bytes}
    body = [f"if len(data) != {length}:", "    return _other(t, data)"]
    hook_env: dict[str, object] = {}
    if hook is not None:
        body += _hook_head(hook, hook_env)
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

        decide += decision(frames.period, f"P{g}", "data", keep_frame)
    held_ids = {id(slot) for frames in held for slot in frames.slots}
    free = [i for i, slot in enumerate(slots) if id(slot) not in held_ids]
    for i in free:
        decide += _decide(i, slots[i], label, env, slots[i].compare_raw)
    values: dict[str, str] = {}  # signal name -> its value expression (for the hook)
    if free:
        code = page.code if not held else page.subset([page.signals[i] for i in free])
        env.update(code.env)
        body += code.lines
        for i, raw, value in zip(free, code.raws, code.values, strict=True):
            if slots[i].raw:  # the value expression is the scaling of the raw just named
                body.append(f"r{i} = {raw}")
                value = scaled(f"r{i}", *page.scaling[i])
            if uses_value(slots[i].filt, slots[i].compare_raw, slots[i].raw):
                body.append(f"v{i} = {value}")
                value = f"v{i}"
            values[page.signals[i].name] = value
    if hook is not None:
        if hook.inputs:
            body += _hook_tail(hook, [values[signal] for signal in hook.inputs], hook_env)  # KeyError: not decoded here
        assert not env.keys() & hook_env.keys(), "a hook's names are its own"
        env.update(hook_env)
    return define(f"step {name}", "step", "t, data", [*body, *decide, "return kept"], env)


# ------------------------------------------------------------------------------ compiling
def define(name: str, function: str, args: str, body: list[str], env: dict[str, object]) -> Callable:
    """Compile `def function(args): body` under the file name `<vehicle-agent NAME>` into `env`."""
    filename, source = f"<vehicle-agent {name}>", "\n".join([f"def {function}({args}):", *_indent(body)])
    # every time, not only when compiled: another source of the same name (another config's policy
    # for this message) may have replaced the lines tracebacks and `debug codegen` show since
    linecache.cache[filename] = (len(source), None, PackedLines(source), filename)  # type: ignore[assignment]  # read by len and index
    exec(_compiled(filename, source), env)  # noqa: S102
    return env[function]  # type: ignore[return-value]  # names and numbers only; signal names go in as repr()


class PackedLines(Sequence[str]):
    """A generated source's lines for `linecache`, kept compressed until a traceback, `inspect` or
    `debug codegen` reads them: a production car compiles thousands of functions (three for many
    messages) and their sources as lists of lines took 5.8 MB of its memory, compressed 1 MB."""

    __slots__ = ("_packed", "_count")

    def __init__(self, source: str) -> None:
        self._packed = zlib.compress(source.encode(), 1)
        self._count = source.count("\n") + 1

    def _lines(self) -> list[str]:
        return zlib.decompress(self._packed).decode().splitlines(True)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines())

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._lines()[index]


_CODE: OrderedDict[tuple[str, bytes], types.CodeType] = OrderedDict()
_CODE_MAX = 4096  # about four production-size buses' worth of messages, each with its own code


def _compiled(filename: str, source: str) -> types.CodeType:
    """Compiling is most of what building a message's step costs (~0.6 ms); a config swap that keeps
    a message's policies generates the same source, bound to the new filters only when run. Kept by a
    digest of the source, not the source itself (the sources of a production car are megabytes); the
    source's lines are registered by `define` (linecache) for tracebacks."""
    key = (filename, hashlib.blake2b(source.encode(), digest_size=16).digest())
    code = _CODE.get(key)
    if code is None:
        code = _CODE[key] = compile(source, filename, "exec")
        while len(_CODE) > _CODE_MAX:
            _CODE.popitem(last=False)
    else:
        _CODE.move_to_end(key)
    return code


def source_of(function: Callable) -> str:
    """The generated source of a compiled function (`vehicle-agent debug codegen`)."""
    filename = function.__code__.co_filename
    entry = linecache.cache.get(filename)
    return "".join(entry[2]) if entry is not None and len(entry) == 4 else ""
