"""Generated per-frame code for campaigns: buffer the frame, and only when a condition input changed
decode it, update its value and evaluate the conditions that read it.

For a plain message the collector compiles (`agent.compiler.compile_step`), this code is inlined in
the collector's own step (`step_hook`): one call a frame, one length check, the collector's
unchanged-payload check and decode shared. Otherwise (multiplexed or cantools-decoded messages,
inputs the collector does not decode, ids only campaigns read) `compile_step` writes a step of its
own wrapping the collector's. A condition whose value did not change reaches the trigger machine
only in mode `always`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.campaigns.expr import MATH
from agent.compiler import StepHook, define  # the collector's compiler: cached, named in tracebacks
from agent.decode.fast import FastDecoder, values_code

if TYPE_CHECKING:
    from cantools.database.can.message import Message

    from agent.campaigns.engine import CampaignEngine, MessageKey, _Run

Step = Callable[[float, bytes], int]
_ARITH = (ArithmeticError, ValueError)


def step_hook(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], decoded: Sequence[str],
              masked: bool) -> StepHook | None:
    """The campaigns' work for frames of `mkey` as lines of the collector's compiled step, which
    decodes the signals `decoded` (on payloads whose wanted bits changed when `masked`); None when
    that step cannot carry it (an input it does not decode; an input whose every sample counts,
    behind the unchanged-payload check)."""
    names = [engine.keys[i][2] for i in inputs]
    every = any(engine.on_sample[i] or engine.windows_of[i] for i in inputs)
    if not set(names) <= set(decoded) or (every and masked):
        return None
    env = _env(engine)
    head = _head(engine, mkey, env)
    return StepHook(env, head, tuple(names), lambda values: _evaluate(engine, inputs, values, env))


def compile_step(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], step: Step | None) -> Step:
    """A step of its own for frame id `mkey`: the campaigns' work, then `step` (the collector's; None: 0)."""
    env = _env(engine)
    env["_step"] = step
    body = _head(engine, mkey, env)
    done = "return _step(t, data)" if step is not None else "return 0"
    if inputs:
        dec = engine.decoders[mkey]
        fast = _fast(dec.message, [engine.keys[i][2] for i in inputs])
        if fast is None or fast.mux is not None or None not in fast.pages:
            env["_feed"] = engine.generic_feed(mkey, inputs)  # multiplexed, nested or cantools: generic
            body.append("_feed(t, data)")
        else:
            body += _inputs(engine, mkey, inputs, fast, env, done)
    return define(f"campaign step {mkey[0]}:{engine.decoders[mkey].name}", "step", "t, data", [*body, done], env)


def _env(engine: CampaignEngine) -> dict[str, object]:
    """Names of the campaigns' lines: the engine, its value lists, the conditions' functions."""
    return {"_E": engine, "_V": engine.values, "_P": engine.prevs, "_ARITH": _ARITH,
            "_v": engine.values, "_p": engine.prevs, "_w": engine.windows, **MATH}


def _head(engine: CampaignEngine, mkey: MessageKey, env: dict[str, object]) -> list[str]:
    """Lines for every frame: into the message's ring (if an event may need it), then the engine's
    timers (hold times, periods, closing events) once its time passes the next due time."""
    lines = []
    ring = engine.rings.get(mkey)
    if ring is not None:  # two C-level appends, no object created (agent.campaigns.buffer)
        env["_ring_t"], env["_ring_data"] = ring.times.append, ring.payloads.append
        lines += ["_ring_t(t)", "_ring_data(data)"]
    return [*lines, "if t >= _E.deadline:", "    _E.due(t)"]


def _fast(message: Message, names: list[str]) -> FastDecoder | None:
    try:
        return FastDecoder(message, names)
    except NotImplementedError:
        return None


def _inputs(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], fast: FastDecoder,
            env: dict[str, object], done: str) -> list[str]:
    """Lines of a step of its own: skip a payload whose input bits did not change, else decode, update, evaluate."""
    page = fast.pages[None]
    slot_of = {engine.keys[i][2]: i for i in inputs}
    order = [slot_of[s.name] for s in page.signals]
    env["_generic"] = engine.generic_feed(mkey, inputs, buffer=False)
    every = any(engine.on_sample[i] or engine.windows_of[i] for i in order)  # each sample counts
    lines = [f"if len(data) != {fast.length}:", "    _generic(t, data)", f"    {done}"]
    if not every:
        env["_prev"], env["_from_bytes"] = engine.last_bits.setdefault(mkey, [None]), int.from_bytes
        lines += [f"bits = _from_bytes(data, 'big') & {fast.mask}", "if bits == _prev[0]:", f"    {done}",
                  "_prev[0] = bits"]
    code = values_code(page.signals, fast.length)
    env.update(code.env)
    return [*lines, *code.lines, *_evaluate(engine, order, code.values, env)]


def _evaluate(engine: CampaignEngine, order: Sequence[int], values: Sequence[str], env: dict[str, object]) -> list[str]:
    """Lines taking the new values of the inputs `order` (value slots; `values`: their expressions):
    update each, then evaluate each condition that reads a changed one, once, with the inputs read
    from the locals (names c{k}, q{k}, cw{k}_{n}, _ok; the conditions' own _v, _p, _w)."""
    local = {i: f"c{k}" for k, i in enumerate(order)}
    lines: list[str] = []
    flags: dict[int, list[str]] = {}  # run id -> expressions saying it must be evaluated
    runs: dict[int, _Run] = {}
    for k, (i, value) in enumerate(zip(order, values, strict=True)):
        lines += [f"c{k} = {value}", f"_P[{i}] = q{k} = _V[{i}]", f"_V[{i}] = c{k}"]
        for run in engine.on_change[i]:
            runs[id(run)] = run
            flags.setdefault(id(run), []).append(f"c{k} != q{k}")
        for run in engine.on_sample[i]:
            runs[id(run)] = run
            flags.setdefault(id(run), []).append("True")
        for n, window in enumerate(engine.windows_of[i]):
            env[f"_W{k}_{n}"] = window
            lines.append(f"cw{k}_{n} = _W{k}_{n}.add(t, c{k})")
            for run in window.deps:
                runs[id(run)] = run
                flags.setdefault(id(run), []).append(f"cw{k}_{n}")
    for j, (rid, run) in enumerate(runs.items()):
        env[f"_R{j}"] = run
        when = " or ".join(dict.fromkeys(flags[rid]))
        lines.append(f"if ({when}) and _R{j}.active:")
        if run.reset is not None:  # hysteresis: the run decides between its set and reset expressions
            lines.append(f"    _R{j}.result(t, _R{j}.compute())")
            continue
        # the condition inlined: its source is unparsed from the checked tree (agent.campaigns.expr);
        # this message's inputs are read from the locals just decoded
        assert run.cond is not None  # a run its inputs trigger has a condition
        source = re.sub(r"\b_v\[(\d+)\]", lambda m: local.get(int(m.group(1)), m.group(0)), run.cond.source)
        lines += ["    try:", f"        _ok = not not ({source})", "    except TypeError:", "        _ok = False",
                  "    except _ARITH:", f"        _ok = _R{j}.error()"]
        lines += [f"    _R{j}.result(t, _ok)"] if run.always else [f"    if _ok is not _R{j}.latched:",
                                                                   f"        _R{j}.result(t, _ok)"]
    return lines
