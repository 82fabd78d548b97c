"""The campaigns' per-frame work laid out as data (a `StepHook`) that agent.compiler writes out: buffer
the frame, and only when a condition input changed decode it, update its value and evaluate the
conditions that read it.

For a plain message the collector compiles (`agent.compiler.compile_step`), this code is inlined in
the collector's own step (`step_hook`): one call a frame, one length check, the collector's
unchanged-payload check and decode shared. Otherwise (multiplexed or cantools-decoded messages,
inputs the collector does not decode, ids only campaigns read) `compile_step` writes a step of its
own wrapping the collector's. A condition whose value did not change reaches the trigger machine
only in mode `always`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.campaigns.expr import MATH
from agent.compiler import CampaignRun, StepHook, compile_campaign_step
from agent.decode.fast import FastDecoder, values_code

if TYPE_CHECKING:
    from cantools.database.can.message import Message

    from agent.campaigns.engine import CampaignEngine, MessageKey, _Run

Step = Callable[[float, bytes], int]


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
    hook = _hook(engine, mkey)
    _lay_out(engine, inputs, hook)
    hook.inputs = tuple(names)
    return hook


def compile_step(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], step: Step | None) -> Step:
    """A step of its own for frame id `mkey`: the campaigns' work, then `step` (the collector's; None: 0)."""
    hook = _hook(engine, mkey)
    if inputs:
        dec = engine.decoders[mkey]
        fast = _fast(dec.message, [engine.keys[i][2] for i in inputs])
        if fast is None or fast.mux is not None or None not in fast.pages:
            hook.feed = engine.generic_feed(mkey, inputs)  # multiplexed, nested or cantools: generic
        else:
            _decoded_here(engine, mkey, inputs, fast, hook)
    return compile_campaign_step(hook, step, f"{mkey[0]}:{engine.decoders[mkey].name}")


def _hook(engine: CampaignEngine, mkey: MessageKey) -> StepHook:
    """The engine, what its conditions read, and the message's ring (if an event may need its frames)."""
    ring = engine.rings.get(mkey)
    return StepHook(engine, {"_v": engine.values, "_p": engine.prevs, "_w": engine.windows, **MATH},
                    (ring.times.append, ring.payloads.append) if ring is not None else None)


def _fast(message: Message, names: list[str]) -> FastDecoder | None:
    try:
        return FastDecoder(message, names)
    except NotImplementedError:
        return None


def _decoded_here(engine: CampaignEngine, mkey: MessageKey, inputs: list[int], fast: FastDecoder,
                  hook: StepHook) -> None:
    """A step of its own decodes the inputs: skipping a payload whose input bits did not change,
    unless every sample of an input counts."""
    page = fast.pages[None]
    slot_of = {engine.keys[i][2]: i for i in inputs}
    order = [slot_of[s.name] for s in page.signals]
    every = any(engine.on_sample[i] or engine.windows_of[i] for i in order)  # each sample counts
    hook.length, hook.mask, hook.generic = fast.length, fast.mask, engine.generic_feed(mkey, inputs, buffer=False)
    hook.last_bits = None if every else engine.last_bits.setdefault(mkey, [None])
    hook.code = values_code(page.signals, fast.length)
    _lay_out(engine, order, hook)


def _lay_out(engine: CampaignEngine, order: Sequence[int], hook: StepHook) -> None:
    """The inputs `order` (value slots), their windows, and each run they trigger with its reasons, in
    the order first reached (the condition's checked source; none for hysteresis, which computes)."""
    hook.slots = list(order)
    hook.windows = [list(engine.windows_of[i]) for i in order]
    runs: dict[int, tuple[_Run, list[tuple[str, int, int]]]] = {}
    for k, i in enumerate(order):
        for run in engine.on_change[i]:
            runs.setdefault(id(run), (run, []))[1].append(("change", k, 0))
        for run in engine.on_sample[i]:
            runs.setdefault(id(run), (run, []))[1].append(("sample", k, 0))
        for n, window in enumerate(engine.windows_of[i]):
            for run in window.deps:
                runs.setdefault(id(run), (run, []))[1].append(("window", k, n))
    for run, reasons in runs.values():
        condition = None  # hysteresis (a reset expression): the run decides itself
        if run.reset is None:
            assert run.cond is not None  # a run its inputs trigger has a condition
            condition = run.cond.source
        hook.runs.append(CampaignRun(run, reasons, condition, run.always))
