"""Generated per-message steps for campaigns: buffer the frame, and only when a condition input's
bits changed decode those inputs, update their values and evaluate the conditions that read them.

One function per message a campaign reads, wrapping the collector's own step for that id (so a
frame costs one call, as without campaigns): straight-line code like the collector's
(`agent.compiler`, whose `define` compiles it), built from the message's compiled decoder (`values_code`). A condition
whose value did not change reaches the trigger machine only in mode `always`. Multiplexed and
cantools-decoded messages take the engine's generic feed, then the step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.campaigns.expr import MATH
from agent.compiler import define  # the collector's compiler: cached, named in tracebacks
from agent.decode.fast import FastDecoder, values_code

if TYPE_CHECKING:
    from cantools.database.can.message import Message

    from agent.campaigns.engine import CampaignEngine, MessageKey, _Run

Step = Callable[[float, bytes], int]
_ARITH = (ArithmeticError, ValueError)


def compile_step(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], step: Step | None) -> Step:
    """The step of frame id `mkey` with the campaigns' work first; `step`: the collector's (None: 0)."""
    env: dict[str, object] = {"E": engine, "_step": step, "_from_bytes": int.from_bytes, "V": engine.values,
                              "P": engine.prevs, "W": engine.windows, "_ARITH": _ARITH,
                              "_v": engine.values, "_p": engine.prevs, "_w": engine.windows, **MATH}
    ring = engine.rings.get(mkey)
    body: list[str] = []
    if ring is not None:
        env["_append"] = ring.append
        body.append("_append((t, data))")
    body += ["if t >= E.deadline:", "    E.due(t)"]
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


def _fast(message: Message, names: list[str]) -> FastDecoder | None:
    try:
        return FastDecoder(message, names)
    except NotImplementedError:
        return None


def _inputs(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], fast: FastDecoder,
            env: dict[str, object], done: str) -> list[str]:
    """Lines: skip a payload whose input bits did not change, else decode, update, evaluate."""
    page = fast.pages[None]
    slot_of = {engine.keys[i][2]: i for i in inputs}
    order = [slot_of[s.name] for s in page.signals]
    env["_generic"] = engine.generic_feed(mkey, inputs, buffer=False)
    every = any(engine.on_sample[i] or engine.windows_of[i] for i in order)  # each sample counts
    lines = [f"if len(data) != {fast.length}:", "    _generic(t, data)", f"    {done}"]
    inner: list[str] = []
    if not every:
        env["_prev"] = engine.last_bits.setdefault(mkey, [None])
        lines += [f"bits = _from_bytes(data, 'big') & {fast.mask}", "if bits == _prev[0]:", f"    {done}",
                  "_prev[0] = bits"]
    code = values_code(page.signals, fast.length)
    env.update(code.env)
    inner += code.lines
    local = {i: f"v{k}" for k, i in enumerate(order)}
    flags: dict[int, list[str]] = {}  # run id -> expressions saying it must be evaluated
    runs: dict[int, _Run] = {}
    for k, (i, value) in enumerate(zip(order, code.values, strict=True)):
        inner += [f"v{k} = {value}", f"P[{i}] = p{k} = V[{i}]", f"V[{i}] = v{k}"]
        for run in engine.on_change[i]:
            runs[id(run)] = run
            flags.setdefault(id(run), []).append(f"v{k} != p{k}")
        for run in engine.on_sample[i]:
            runs[id(run)] = run
            flags.setdefault(id(run), []).append("True")
        for n, window in enumerate(engine.windows_of[i]):
            env[f"W{k}_{n}"] = window
            inner.append(f"w{k}_{n} = W{k}_{n}.add(t, v{k})")
            for run in window.deps:
                runs[id(run)] = run
                flags.setdefault(id(run), []).append(f"w{k}_{n}")
    for j, (rid, run) in enumerate(runs.items()):
        env[f"R{j}"] = run
        when = " or ".join(dict.fromkeys(flags[rid]))
        inner.append(f"if ({when}) and R{j}.active:")
        if run.reset is not None:  # hysteresis: the run decides between its set and reset expressions
            inner.append(f"    R{j}.result(t, R{j}.compute())")
            continue
        # the condition inlined: its source is unparsed from the checked tree (agent.campaigns.expr);
        # this message's inputs are read from the locals just decoded
        assert run.cond is not None  # a run its inputs trigger has a condition
        source = re.sub(r"\b_v\[(\d+)\]", lambda m: local.get(int(m.group(1)), m.group(0)), run.cond.source)
        inner += ["    try:", f"        r = not not ({source})", "    except TypeError:", "        r = False",
                  "    except _ARITH:", f"        r = R{j}.error()"]
        inner += [f"    R{j}.result(t, r)"] if run.always else [f"    if r is not R{j}.latched:", f"        R{j}.result(t, r)"]
    return lines + inner
