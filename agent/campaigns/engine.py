"""The campaign engine: frames of the wanted messages in, condition evaluations, events out.

Built once per config from the campaigns and the buses' decoders. Per frame of a message a campaign
reads (`feed(bus, frame_id)` gives the function to call), the engine
- appends `(t, payload)` to the message's ring if an event may need it (`agent.campaigns.buffer`),
- if the message carries condition inputs: compares their payload bits with the last frame's and,
  only when they changed, decodes them and evaluates the conditions that read them (once per frame,
  with every signal of the frame updated first),
- when its time passes the next due time: fires hold timers and `while` repetitions, periodic
  campaigns, start and expiry, and closes events whose post window is over (`settle_s` later,
  so frames of slower buses arrive first).

An event carries the samples of `[t - pre_s, t + post_s]`; the events of one campaign never share a
sample: an event whose pre window reaches into the previous one starts where that one ended (its
header names it). Frames are decoded only when an event closes.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from cantools.database.errors import DecodeError

from agent.campaigns.buffer import DEFAULT_BUDGET_BYTES, FrameRing, RingNeed, plan_capacities
from agent.campaigns.expr import Condition, ExpressionError, Parsed, compile_condition, parse
from agent.campaigns.feedgen import compile_step
from agent.campaigns.model import Campaign
from agent.campaigns.trigger import INF, TriggerState
from agent.collect.policy import MinInterval
from agent.decode import load_databases
from agent.decode.decoder import FrameDecoder, MessageDecoder
from agent.decode.fast import FastDecoder

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = structlog.get_logger()

Key = tuple[str, str, str]          # bus, message, signal
MessageKey = tuple[str, int]        # bus, frame id
Columns = dict[Key, tuple[list[float], list]]
Feed = Callable[[float, bytes], None]
Step = Callable[[float, bytes], int]
DECODE_ERRORS = (ValueError, KeyError, DecodeError, struct.error)


class CampaignError(ValueError):
    """Campaigns that do not fit the databases; one line per problem, naming campaign and field."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass
class Event:
    """One trigger's capture, handed to `on_event` when its post window is over."""

    campaign: str
    event_id: str
    trigger_t: float
    expr: str
    window: tuple[float, float]          # [t - pre_s, t + post_s] as asked
    start: float                          # where its samples start (the previous event's end if it reached in)
    follows: str | None                   # id of the event it continues (samples after `start` only)
    priority: str
    manual: bool
    columns: Columns
    complete: bool = True                 # False: flushed before its post window ended (shutdown, removal)
    truncated: list[str] = field(default_factory=list)  # signals whose ring had dropped frames of the window

    @property
    def sample_count(self) -> int:
        return sum(len(ts) for ts, _ in self.columns.values())

    def header(self) -> dict[str, Any]:
        """What the batch header and the message properties carry."""
        return {"campaign": self.campaign, "event_id": self.event_id, "trigger_t": self.trigger_t,
                "expr": self.expr, "window": list(self.window), "start": self.start, "follows": self.follows,
                "manual": self.manual, "complete": self.complete, "truncated": self.truncated}


_Stat = float | None  # a window's min, max or average; None: no complete window yet


class _Window:
    """Fixed (tumbling) windows of one signal: min/max/avg of the last complete window and the one before."""

    __slots__ = ("ms", "k", "lo", "hi", "total", "n", "deps", "last_window_min", "last_window_max",
                 "last_window_avg", "prev_last_window_min", "prev_last_window_max", "prev_last_window_avg")

    def __init__(self, ms: float) -> None:
        self.ms, self.n = ms, 0
        self.k: int | None = None  # the current window's number
        self.lo = self.hi = self.total = 0.0
        self.deps: list[_Run] = []
        self.last_window_min: _Stat = None
        self.last_window_max: _Stat = None
        self.last_window_avg: _Stat = None
        self.prev_last_window_min: _Stat = None
        self.prev_last_window_max: _Stat = None
        self.prev_last_window_avg: _Stat = None

    def add(self, t: float, v: float) -> bool:
        """Account a sample; True when a window closed (the statistics changed)."""
        k = int(t * 1000.0 // self.ms)
        rolled = False
        if k != self.k:
            if self.k is not None and k > self.k:
                done = (self.lo, self.hi, self.total / self.n) if self.n else (None, None, None)
                last = (self.last_window_min, self.last_window_max, self.last_window_avg)
                if k - self.k > 1:  # the windows in between had no sample
                    last, done = done, (None, None, None)
                (self.prev_last_window_min, self.prev_last_window_max, self.prev_last_window_avg) = last
                (self.last_window_min, self.last_window_max, self.last_window_avg) = done
                rolled = True
            self.k, self.n, self.total = k, 0, 0.0
        if v == v:  # NaN has no place in min/max/avg
            if self.n == 0:
                self.lo = self.hi = v
            elif v < self.lo:
                self.lo = v
            elif v > self.hi:
                self.hi = v
            self.total += v
            self.n += 1
        return rolled


@dataclass
class _Pending:
    event_id: str
    t: float
    lo: float
    hi: float
    start: float
    follows: str | None
    manual: bool


@dataclass
class CampaignCounters:
    """What a campaign did; kept across config swaps that keep the campaign unchanged."""

    triggers: int = 0
    suppressed: int = 0           # triggers within min_interval_ms of the last one
    events: int = 0
    samples: int = 0
    eval_errors: int = 0          # arithmetic errors (division by zero, overflow): evaluated as false
    truncated_events: int = 0
    events_failed: int = 0        # events the sink side refused (logged)
    last_trigger_t: float | None = None


class _Run:
    """One campaign in the engine: its compiled condition(s), trigger state, pending events."""

    def __init__(self, campaign: Campaign, engine: CampaignEngine) -> None:
        self.campaign, self.engine = campaign, engine
        self.id = campaign.id
        self.start, self.expiry = campaign.start_t, campaign.expiry_t
        self.active = False
        trig = campaign.trigger
        self.trigger = TriggerState(trig.mode, trig.hold_ms / 1000.0, trig.min_interval_ms / 1000.0) if trig else None
        self.interval = trig.min_interval_ms / 1000.0 if trig and trig.mode != "while" else 0.0
        self.period = campaign.period_ms / 1000.0 if campaign.period_ms else None
        self.next_period = INF
        self.expr = trig.text if trig else f"period_ms: {campaign.period_ms}"
        self.cond: Condition | None = None
        self.reset: Condition | None = None
        self.latched = False
        self.counters = CampaignCounters()
        self.last_fire = -INF
        self.covered_until = -INF
        self.last_event: str | None = None
        self.pending: list[_Pending] = []
        self.event_signals: dict[MessageKey, list[str]] = {}  # messages and signals its events carry
        self.decoders: dict[MessageKey, tuple[FastDecoder | None, list[MinInterval | None]]] = {}
        self.always = trig is not None and trig.mode == "always"  # every evaluation counts, not only changes
        self.inputs: set[int] = set()       # value slots its conditions read
        self.per_sample: set[int] = set()   # ... of which every sample counts (prev, delta, changed)

    # ----------------------------------------------------------------- conditions
    def evaluate(self, t: float) -> None:
        """Evaluate the condition now (one of its inputs changed) and take the result."""
        if self.active:
            self.result(t, self.compute())

    def compute(self) -> bool:
        eng = self.engine
        try:
            if self.reset is None:
                truth = bool(self.cond(eng.values, eng.prevs, eng.windows))  # type: ignore[misc]
            elif self.latched:
                truth = not self.reset(eng.values, eng.prevs, eng.windows)
            else:
                truth = bool(self.cond(eng.values, eng.prevs, eng.windows))  # type: ignore[misc]
        except TypeError:  # an input not received yet (None): the condition is false
            truth = self.latched if self.reset is not None else False
        except (ArithmeticError, ValueError):
            self.counters.eval_errors += 1
            truth = False
        return truth

    def error(self) -> bool:
        """An arithmetic error in the condition (the generated step's path): counted, false."""
        self.counters.eval_errors += 1
        return False

    def result(self, t: float, truth: bool) -> None:
        """The condition's value at `t`, through the trigger mode."""
        self.latched = truth
        eng = self.engine
        assert self.trigger is not None
        for at in self.trigger.update(t, truth):
            self.fire(at)
        if self.trigger.armed < eng.deadline:
            eng.deadline = self.trigger.armed

    # ----------------------------------------------------------------- triggers and events
    def fire(self, t: float, manual: bool = False) -> str | None:
        c = self.counters
        if not manual and t - self.last_fire < self.interval:
            c.suppressed += 1
            return None
        self.last_fire = t
        c.triggers += 1
        c.last_trigger_t = t
        event_id = f"{int(t * 1000):012x}{uuid.uuid4().hex[:12]}"
        lo, hi = t - self.campaign.pre_s, t + self.campaign.post_s
        start, follows = lo, None
        if self.covered_until >= lo:  # reaches into the previous event: share, do not duplicate
            start, follows = self.covered_until, self.last_event
        self.covered_until, self.last_event = max(self.covered_until, hi), event_id
        self.pending.append(_Pending(event_id, t, lo, hi, start, follows, manual))
        eng = self.engine
        eng.deadline = min(eng.deadline, hi + eng.settle_s)
        log.debug("campaign_triggered", campaign=self.id, event_id=event_id, trigger_t=t, manual=manual)
        return event_id

    def close(self, p: _Pending, complete: bool = True) -> Event:
        """Assemble the samples of a pending event from the rings (decoded only now)."""
        eng = self.engine
        columns: Columns = {}
        truncated: list[str] = []
        limit = self.campaign.max_samples
        hi = p.hi if complete else min(p.hi, eng.now)
        for mkey, names in self.event_signals.items():
            ring = eng.rings.get(mkey)
            if ring is None:
                continue
            frames, lost = ring.between(p.start, hi, p.follows is not None)
            dec = eng.decoders[mkey]
            if lost:
                truncated += [f"{mkey[0]}.{dec.name}.{n}" for n in names]
            fast, gaps = self._decoder(mkey, dec, names)
            cols: list[tuple[list[float], list[Any]]] = [([], []) for _ in names]
            for gap in gaps:
                if gap is not None:
                    gap.next_t = -INF
            for ft, data in frames:
                values = _decode(fast, dec, names, data)
                if values is None:
                    continue
                for k, v in enumerate(values):
                    if v is _ABSENT:
                        continue
                    gap = gaps[k]
                    if gap is not None and gap.offer(ft, v) is None:
                        continue
                    cols[k][0].append(ft)
                    cols[k][1].append(v)
            for name, (ts, vs) in zip(names, cols, strict=True):
                if ts:
                    if limit is not None and len(ts) > limit:
                        ts, vs = ts[-limit:], vs[-limit:]
                    columns[(mkey[0], dec.name, name)] = (ts, vs)
        c = self.counters
        c.events += 1
        if truncated:
            c.truncated_events += 1
        event = Event(self.id, p.event_id, p.t, self.expr, (p.lo, p.hi), p.start, p.follows,
                      self.campaign.priority, p.manual, columns, complete, truncated)
        c.samples += event.sample_count
        return event

    def _decoder(self, mkey: MessageKey, dec: MessageDecoder,
                 names: list[str]) -> tuple[FastDecoder | None, list[MinInterval | None]]:
        """The compiled decoder of this campaign's signals of a message (built at its first event)."""
        got = self.decoders.get(mkey)
        if got is None:
            try:
                fast: FastDecoder | None = FastDecoder(dec.message, names)
            except NotImplementedError:  # nested multiplexing: cantools
                fast = None
            gaps = [None] * len(names)
            wanted = self.campaign.signals
            for k, name in enumerate(names):
                rule = _first_rule(wanted, mkey[0], dec.name, name)
                if rule is not None and rule.min_interval_ms > 0:
                    gaps[k] = MinInterval(rule.min_interval_ms / 1000.0)  # type: ignore[call-overload]
            got = self.decoders[mkey] = (fast, gaps)  # type: ignore[assignment]
        return got  # type: ignore[return-value]

    def state(self, now: float) -> str:
        if now >= self.expiry:
            return "expired"
        if now < self.start:
            return "waiting"
        return "active"


_ABSENT = object()


def _decode(fast: FastDecoder | None, dec: MessageDecoder, names: list[str], data: bytes) -> list | None:
    """The values of `names` in one payload (absent ones, of another multiplexer page, as _ABSENT)."""
    if len(data) < dec.length:
        return None
    try:
        if fast is None:
            values = dec.decode(data)
            return [values.get(n, _ABSENT) for n in names]
        decoded = fast.decode(data)
    except DECODE_ERRORS:
        return None
    if decoded is None:
        return None
    page = fast.pages[decoded[0]]
    got = dict(zip((s.name for s in page.signals), decoded[1], strict=True))
    return [got.get(n, _ABSENT) for n in names]


def _first_rule(rules: Sequence[Any], bus: str, message: str, signal: str) -> Any:
    for rule in rules:
        m = _glob(rule.match)
        if m(signal) or m(f"{message}.{signal}") or m(f"{bus}.{message}.{signal}"):
            return rule
    return None


_GLOBS: dict[str, Callable[[str], Any]] = {}


def _glob(pattern: str) -> Callable[[str], Any]:
    match = _GLOBS.get(pattern)
    if match is None:
        if len(_GLOBS) > 4096:
            _GLOBS.clear()
        match = _GLOBS[pattern] = re.compile(fnmatch.translate(pattern)).match
    return match


def campaign_errors(cfg: AgentConfig) -> list[str]:
    """Why the config's campaigns do not fit its buses' databases (unknown or ambiguous signals,
    labels, globs matching nothing), one line each naming campaign, field and position; [] if they fit."""
    if not cfg.campaigns:
        return []
    decoders = {bus.name: FrameDecoder(load_databases([cfg.resolve(p) for p in bus.databases], strict=bus.strict))
                for bus in cfg.buses}
    try:
        CampaignEngine(cfg.campaigns, decoders, lambda event: None, budget_bytes=cfg.campaign_buffer_max_bytes)
    except CampaignError as exc:
        return exc.errors
    return []


class Catalog:
    """Every signal of the buses' databases, for resolving references and globs."""

    def __init__(self, decoders: Mapping[str, FrameDecoder]) -> None:
        self.decoders = decoders
        self.signals: list[tuple[Key, MessageKey]] = [
            ((bus, dec.name, sig), (bus, fid))
            for bus, fd in decoders.items() for fid, dec in fd.by_id.items() for sig in dec.signals]
        self.by_key = dict(self.signals)

    def resolve(self, name: str, suffix: bool = False) -> Key:
        """A signal reference (`Signal`, `Message.Signal`, `bus.Message.Signal`) to its key; with
        `suffix` (FleetWise's `$variable` names, e.g. `Vehicle.Chassis.BrakePressure`), the longest of
        its last three, two or one parts that names a signal. ValueError when unknown or ambiguous."""
        parts = name.split(".")
        tries = [n for n in (3, 2, 1) if n <= len(parts)] if suffix else [len(parts)] if len(parts) <= 3 else []
        for n in tries:
            tail = tuple(parts[-n:])
            found = [key for key, _ in self.signals if key[3 - n:] == tail]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                shown = ", ".join(".".join(k) for k in found[:4])
                raise ValueError(f"signal {name!r} is ambiguous ({shown}); qualify it (Message.Signal or bus.Message.Signal)")
        raise ValueError(f"unknown signal {name!r} (on no bus's database)")

    def match(self, pattern: str) -> list[Key]:
        m = _glob(pattern)
        return [key for key, _ in self.signals
                if m(key[2]) or m(f"{key[1]}.{key[2]}") or m(f"{key[0]}.{key[1]}.{key[2]}")]


class CampaignEngine:
    """All campaigns of one config; see the module docstring."""

    def __init__(self, campaigns: Sequence[Campaign], decoders: Mapping[str, FrameDecoder],
                 on_event: Callable[[Event], None], *, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 settle_s: float = 0.5, previous: CampaignEngine | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.on_event, self.settle_s, self.clock = on_event, settle_s, clock
        self.budget_bytes = budget_bytes
        self.catalog = Catalog(decoders)
        self.decoders: dict[MessageKey, MessageDecoder] = {
            (bus, fid): dec for bus, fd in decoders.items() for fid, dec in fd.by_id.items()}
        self.keys: list[Key] = []
        self.index: dict[Key, int] = {}
        self.values: list = []
        self.prevs: list = []
        self.windows: list[_Window] = []
        self._window_at: dict[tuple[int, float], int] = {}
        self.runs: dict[str, _Run] = {}
        self.deadline = INF
        self.now: float = previous.now if previous is not None else -INF
        self.rings: dict[MessageKey, FrameRing] = {}
        self.budget_limited = False
        self.decode_errors = 0
        self.taken_over: set[str] = set()  # campaigns that continue a previous engine's
        errors: list[str] = []
        for campaign in campaigns:
            try:
                self.runs[campaign.id] = self._build(campaign)
            except CampaignError as exc:
                errors += exc.errors
        if errors:
            raise CampaignError(errors)
        self._plan_rings(previous)
        self.last_bits: dict[MessageKey, list[int | None]] = {}  # the generated steps' unchanged-input check
        self._inputs_of = self._plan_inputs()
        if previous is not None:
            self._take_over(previous)
        self._schedule()

    # ----------------------------------------------------------------- building
    def _slot(self, key: Key) -> int:
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.keys)
            self.keys.append(key)
            self.values.append(None)
            self.prevs.append(None)
        return i

    def _build(self, campaign: Campaign) -> _Run:
        run = _Run(campaign, self)
        where = f"campaign {campaign.id!r}"
        errors: list[str] = []
        inputs: set[int] = set()
        if campaign.trigger is not None:
            for fieldname, text in campaign.trigger.expressions().items():
                try:
                    parsed = parse(text)
                    fn, used = self._compile(parsed, run)
                except ExpressionError as exc:
                    errors.append(f"{where}: trigger.{fieldname}: {exc}")
                    continue
                inputs |= used
                if fieldname == "reset":
                    run.reset = fn
                else:
                    run.cond = fn
        only: set[Key] = set()
        for k, pattern in enumerate(campaign.condition_only):
            keys = self._match_or_resolve(pattern)
            if not keys:
                errors.append(f"{where}: condition_only[{k}]: no signal matches {pattern!r}")
            only.update(keys)
        carried: list[Key] = [self.keys[i] for i in sorted(inputs) if self.keys[i] not in only]
        for k, sig in enumerate(campaign.signals):
            keys = self._match_or_resolve(sig.match)
            if not keys:
                errors.append(f"{where}: signals[{k}].match: no signal matches {sig.match!r}")
            carried += [key for key in keys if key not in only and key not in carried]
        if errors:
            raise CampaignError(errors)
        for key in carried:
            mkey = self.catalog.by_key[key]
            names = run.event_signals.setdefault(mkey, [])
            if key[2] not in names:
                names.append(key[2])
        run.inputs = inputs
        return run

    def _match_or_resolve(self, pattern: str) -> list[Key]:
        if any(ch in pattern for ch in "*?["):
            return self.catalog.match(pattern)
        try:
            return [self.catalog.resolve(pattern)]
        except ValueError:
            return []

    def _compile(self, parsed: Parsed, run: _Run) -> tuple[Condition, set[int]]:
        used: set[int] = set()
        positions = {r.name: r.position for r in reversed(parsed.references)}

        def index(name: str) -> int:
            try:
                key = self.catalog.resolve(name, name in parsed.fleetwise)
            except ValueError as exc:
                raise ExpressionError(str(exc), positions.get(name, 1)) from None
            i = self._slot(key)
            used.add(i)
            return i

        def label(signal: str, text: str) -> float:
            key = self.catalog.resolve(signal, signal in parsed.fleetwise)
            dec = self.decoders[self.catalog.by_key[key]]
            table = {v: k for k, v in dec.choices.get(key[2], {}).items()}
            if text not in table:
                at = next((p for s, lab, p in parsed.labels if s == signal and lab == text), 1)
                known = ", ".join(sorted(table)[:12]) or "none: the signal has no value table"
                raise ExpressionError(f"{text!r} is not a label of {signal} (labels: {known})", at)
            return float(table[text])

        def window(fn: str, signal: str, ms: float) -> int:
            i = index(signal)
            w = self._window_at.get((i, ms))
            if w is None:
                w = self._window_at[(i, ms)] = len(self.windows)
                self.windows.append(_Window(ms))
            if run not in self.windows[w].deps:
                self.windows[w].deps.append(run)
            return w

        fn = compile_condition(parsed, index, label, window)
        run.per_sample |= {index(name) for name in parsed.per_sample}
        return fn, used

    def _plan_rings(self, previous: CampaignEngine | None) -> None:
        needs: dict[MessageKey, RingNeed] = {}
        for run in self.runs.values():
            seconds = run.campaign.pre_s + run.campaign.post_s + self.settle_s + 1.0
            for mkey in run.event_signals:
                dec = self.decoders[mkey]
                old = needs.get(mkey)
                if old is None or old.seconds < seconds:
                    needs[mkey] = RingNeed(seconds, dec.message.cycle_time, dec.length)
        sizes, self.budget_limited = plan_capacities(needs, self.budget_bytes)
        if self.budget_limited:
            log.warning("campaign_buffers_limited", budget_bytes=self.budget_bytes,
                        action="rings cut to fit; events may miss their oldest samples (counted as truncated)")
        for mkey, size in sizes.items():
            kept = previous.rings[mkey].frames if previous is not None and mkey in previous.rings else None
            self.rings[mkey] = FrameRing(size, needs[mkey].length, kept)

    def _plan_inputs(self) -> dict[MessageKey, list[int]]:
        """Every message a campaign reads, with the value slots of its condition inputs."""
        deps: dict[int, list[_Run]] = {}
        every: dict[int, list[_Run]] = {}
        for run in self.runs.values():
            for i in run.inputs:
                deps.setdefault(i, []).append(run)
            for i in run.per_sample:
                every.setdefault(i, []).append(run)
        self.on_change = [deps.get(i, []) for i in range(len(self.keys))]
        self.on_sample = [every.get(i, []) for i in range(len(self.keys))]
        self.windows_of: list[list[_Window]] = [[] for _ in self.keys]
        for (i, _ms), w in self._window_at.items():
            self.windows_of[i].append(self.windows[w])
        by_message: dict[MessageKey, list[int]] = {}
        for i, key in enumerate(self.keys):
            if self.on_change[i]:
                by_message.setdefault(self.catalog.by_key[key], []).append(i)
        return {mkey: by_message.get(mkey, []) for mkey in set(by_message) | set(self.rings)}

    def generic_feed(self, mkey: MessageKey, inputs: list[int], buffer: bool = True) -> Feed:
        """The per-frame work for a message the generated steps do not cover (multiplexed, cantools,
        another length): buffer (unless `buffer` is False), then decode and update the inputs."""
        ring = self.rings.get(mkey) if buffer else None
        append = ring.append if ring is not None else None
        dec = self.decoders[mkey]
        names = [self.keys[i][2] for i in inputs]
        try:
            fast: FastDecoder | None = FastDecoder(dec.message, names)
        except NotImplementedError:
            fast = None
        slot_of = dict(zip(names, inputs, strict=True))
        pages = {k: [slot_of[s.name] for s in page.signals] for k, page in fast.pages.items()} if fast else {}
        always = any(self.on_sample[i] or self.windows_of[i] for i in inputs)  # every sample counts
        mask = fast.mask if fast is not None and not always else None
        length = dec.length
        prev: list[int | None] = [None]
        update, from_bytes = self.update, int.from_bytes

        def feed(t: float, data: bytes) -> None:
            if append is not None:
                append((t, data))
                if t >= self.deadline:
                    self.due(t)
            if len(data) != length:
                if len(data) < length:
                    self.decode_errors += 1
                    return
                data = bytes(data[:length])
            if mask is not None:
                bits = from_bytes(data, "big") & mask
                if bits == prev[0]:
                    return
                prev[0] = bits
            try:
                if fast is None:
                    values = dec.decode(data)
                    slots = [slot_of[n] for n in names if n in values]
                    update(t, slots, [values[self.keys[i][2]] for i in slots])
                    return
                decoded = fast.decode(data)
            except DECODE_ERRORS:
                self.decode_errors += 1
                prev[0] = None
                return
            if decoded is not None:
                update(t, pages[decoded[0]], decoded[1])
        return feed

    def _take_over(self, previous: CampaignEngine) -> None:
        """A config swap: campaigns whose definition did not change keep their state and pending events
        (copied: the previous engine keeps its own until `retire`, in case the swap fails after this)."""
        for cid, run in self.runs.items():
            old = previous.runs.get(cid)
            if old is None or old.campaign != run.campaign:
                continue
            run.counters, run.last_fire, run.covered_until = old.counters, old.last_fire, old.covered_until
            run.last_event, run.pending, run.latched, run.active = old.last_event, list(old.pending), old.latched, old.active
            run.next_period = old.next_period
            if run.trigger is not None and old.trigger is not None:
                run.trigger = copy.copy(old.trigger)
            self.taken_over.add(cid)
        for i, key in enumerate(self.keys):
            j = previous.index.get(key)
            if j is not None:
                self.values[i], self.prevs[i] = previous.values[j], previous.prevs[j]

    # ----------------------------------------------------------------- running
    def step_for(self, bus: str, frame_id: int, step: Step | None) -> Step | None:
        """The collector's `step` of this id with the campaigns' work before it (generated once per
        config and id, `agent.campaigns.feedgen`); None if no campaign reads the id."""
        inputs = self._inputs_of.get((bus, frame_id))
        if inputs is None:
            return None
        return compile_step(self, (bus, frame_id), inputs, step)

    def feed(self, bus: str, frame_id: int) -> Step | None:
        """The campaigns' work alone for frames of this id (returns 0), or None if no campaign reads it."""
        return self.step_for(bus, frame_id, None)

    @property
    def message_keys(self) -> set[MessageKey]:
        return set(self._inputs_of)

    def update(self, t: float, slots: Sequence[int], values: Sequence[Any]) -> None:
        """New values of condition inputs (one frame's): evaluate each condition that reads a changed one, once."""
        vals, prevs, on_change, on_sample, windows_of = self.values, self.prevs, self.on_change, self.on_sample, self.windows_of
        dirty: list[_Run] = []
        for i, v in zip(slots, values, strict=True):
            p = vals[i]
            prevs[i] = p
            vals[i] = v
            if v != p:
                dirty += on_change[i]
            elif on_sample[i]:
                dirty += on_sample[i]
            for w in windows_of[i]:
                if w.add(t, v):
                    dirty += w.deps
        if dirty:
            for run in (dirty if len(dirty) == 1 else dict.fromkeys(dirty)):
                run.evaluate(t)

    def due(self, t: float) -> None:
        """Engine time reached the next due time: timers, periods, start/expiry, closing events."""
        if t > self.now:
            self.now = t
        now = self.now
        for run in self.runs.values():
            self._due_run(run, now)
        self._schedule()

    def _due_run(self, run: _Run, now: float) -> None:
        if not run.active and run.start <= now < run.expiry:
            run.active = True
            if run.period is not None:
                run.next_period = now + run.period
            log.info("campaign_active", campaign=run.id)
            if run.cond is not None:  # a condition already true at the start is an edge, at the start
                run.evaluate(run.start if run.start > -INF else now)
        if run.active and now >= run.expiry:
            run.active = False
            run.next_period = INF
            if run.trigger is not None:
                run.trigger.armed = INF
            log.info("campaign_expired", campaign=run.id)
        if run.active:
            if run.trigger is not None:
                for at in run.trigger.due(now):
                    run.fire(at)
            while run.next_period <= now:
                run.fire(run.next_period)
                run.next_period += run.period  # type: ignore[operator]
        while run.pending and run.pending[0].hi + self.settle_s <= now:
            self._emit(run, run.pending.pop(0))

    def _schedule(self) -> None:
        deadline = INF
        for run in self.runs.values():
            if not run.active:
                if self.now < run.expiry:
                    deadline = min(deadline, run.start)  # -inf without a start: activates at the first frame
            else:
                deadline = min(deadline, run.expiry, run.next_period,
                               run.trigger.armed if run.trigger is not None else INF)
            if run.pending:
                deadline = min(deadline, run.pending[0].hi + self.settle_s)
        self.deadline = deadline

    def _emit(self, run: _Run, pending: _Pending, complete: bool = True) -> None:
        event = run.close(pending, complete)
        log.info("campaign_event", campaign=run.id, event_id=event.event_id, samples=event.sample_count,
                 complete=complete, truncated=len(event.truncated))
        try:
            self.on_event(event)
        except Exception as exc:  # noqa: BLE001 - an event that cannot be stored must not stop the frames
            run.counters.events_failed += 1
            log.error("campaign_event_not_stored", campaign=run.id, event_id=event.event_id, error=repr(exc))

    def advance(self, t: float) -> None:
        """Time passed without frames of campaign messages (the housekeeping tick)."""
        if t >= self.deadline:
            self.due(t)
        elif t > self.now:
            self.now = t

    def latest(self) -> float:
        """The engine's time: its last due time or the newest buffered frame, else the clock."""
        newest = max((ring.frames[-1][0] for ring in self.rings.values() if ring.frames), default=-INF)
        now = max(self.now, newest)
        return now if now > -INF else self.clock()

    def trigger(self, campaign_id: str, t: float | None = None) -> str:
        """Fire a campaign by hand (a field test); returns the event id. KeyError: no such campaign;
        ValueError: the campaign is not active."""
        run = self.runs[campaign_id]
        at = t if t is not None else self.latest()
        if at > self.now:
            self.now = at
        self._due_run(run, at)
        state = run.state(at)
        if state != "active":
            raise ValueError(f"campaign {campaign_id!r} is {state}")
        event_id = run.fire(at, manual=True)
        assert event_id is not None
        self._schedule()
        return event_id

    def retire(self, successor: CampaignEngine | None) -> None:
        """This engine was swapped out: emit the pending events of campaigns the successor did not take over."""
        taken = successor.taken_over if successor is not None else set()
        self.flush([cid for cid in self.runs if cid not in taken])

    def flush(self, campaigns: Sequence[str] | None = None) -> None:
        """Emit pending events now with what they have (shutdown; campaigns removed by a config swap)."""
        for run in self.runs.values():
            if campaigns is None or run.id in campaigns:
                while run.pending:
                    p = run.pending.pop(0)
                    self._emit(run, p, complete=self.now >= p.hi)
        self._schedule()

    # ----------------------------------------------------------------- reporting
    @property
    def buffer_bytes(self) -> int:
        return sum(ring.nbytes for ring in self.rings.values())

    def status(self) -> dict[str, Any]:
        """Per campaign state and counters, and the buffers' memory (status file, reported properties)."""
        now = self.latest()
        campaigns = {}
        for cid, run in self.runs.items():
            c = run.counters
            campaigns[cid] = {
                "state": run.state(now), "triggers": c.triggers, "suppressed": c.suppressed,
                "last_trigger_t": c.last_trigger_t, "events": c.events, "samples": c.samples,
                "pending_events": len(run.pending), "eval_errors": c.eval_errors,
                "truncated_events": c.truncated_events, "events_failed": c.events_failed,
                "buffer_bytes": sum(self.rings[m].nbytes for m in run.event_signals if m in self.rings),
            }
        return {"campaigns": campaigns, "buffer_bytes": self.buffer_bytes,
                "buffer_capacity_bytes": sum(r.capacity_bytes for r in self.rings.values()),
                "budget_bytes": self.budget_bytes, "budget_limited": self.budget_limited,
                "decode_errors": self.decode_errors}
