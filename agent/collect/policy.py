"""Sampling policies: one small stateful filter per (bus, message, signal).

Policies are resolved once per config (first matching rule wins, by exact name or glob, against
the signal name or `Message.Signal`), so the per-frame cost is one call per wanted signal.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from agent.config import CollectionConfig, SignalPolicy

Value = float | int
Emit = tuple[float, Value] | None
# Builds the lines that keep a sample: (time expression, value expression) -> source lines.
Keep = Callable[[str, str], list[str]]


def resolve_policy(cfg: CollectionConfig, message: str, signal: str) -> SignalPolicy:
    """The first rule whose `match` fits the signal name or 'Message.Signal'; else the default."""
    return policy_resolver(cfg)(message, signal)


def policy_resolver(cfg: CollectionConfig) -> Callable[[str, str], SignalPolicy]:
    """`resolve_policy` for many signals of one config: the globs (`fnmatch`'s, case-sensitive) are
    compiled once, because a large database (a J1939 DBC has ~12,000 signals) is resolved on every
    config swap while frames wait."""
    rules = [(re.compile(fnmatch.translate(rule.match)).match, rule) for rule in cfg.signals]
    default = cfg.default

    def resolve(message: str, signal: str) -> SignalPolicy:
        qualified = f"{message}.{signal}"
        for match, rule in rules:
            if match(signal) or match(qualified):
                return rule
        return default

    return resolve


class Filter:
    """Decides, per offered value, whether (and which) sample to emit. `flush` returns a held sample.

    `inline` gives the same decision as source lines for the collector's generated per-message
    code (no call per signal on the hot path); `offer` is the reference, and tests compare both.
    """

    __slots__ = ()
    emits_offered = False  # True: a kept sample is always the value just offered, at its time

    def offer(self, t: float, v: Value) -> Emit:
        return (t, v)

    def flush(self) -> Emit:
        return None

    def inline(self, f: str, v: str, keep: Keep, raw: str | None = None) -> list[str]:
        """Lines deciding on value `v` at time `t`, with this filter bound to the name `f`.

        `raw`, when given, names the raw integer behind `v`, which the collector checked is one to
        one with it (`agent.decode.fast.one_to_one`): a filter that only compares values may
        compare raws instead and spare the scaling. Such a filter then holds raws, so the collector
        uses one way (`inline` with raw, or `offer`) per filter object, never both.
        """
        return [f"_e = {f}.offer(t, {v})", "if _e is not None:", *_indent(keep("_e[0]", "_e[1]"))]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


class KeepAll(Filter):
    __slots__ = ()
    emits_offered = True

    def inline(self, f: str, v: str, keep: Keep, raw: str | None = None) -> list[str]:
        return keep("t", v)


class OnChange(Filter):
    """Keeps a value when it differs from the last kept one by more than the deadband.

    A repeated NaN counts as unchanged, as an unchanged payload does (the collector skips those
    without decoding), so every decode path keeps the same samples.
    """

    __slots__ = ("deadband", "last")
    emits_offered = True

    def __init__(self, deadband: float) -> None:
        self.deadband = deadband
        self.last: Value | None = None

    def offer(self, t: float, v: Value) -> Emit:
        last = self.last
        # unchanged: equal, both NaN (a float signal's "no value" repeated), or within the deadband
        if last is not None and (v == last or (v != v and last != last)
                                 or (self.deadband and abs(v - last) <= self.deadband)):
            return None
        self.last = v
        return (t, v)

    def inline(self, f: str, v: str, keep: Keep, raw: str | None = None) -> list[str]:
        if raw is not None and not self.deadband:  # integers: no NaN, and equal raws are equal values
            return [f"if {raw} != {f}.last:", f"    {f}.last = {raw}", *_indent(keep("t", v))]
        changed = f"{v} != _l and ({v} == {v} or _l == _l)"  # not equal, and not both NaN (None: the first)
        if self.deadband:
            changed = f"_l is None or ({changed} and not abs({v} - _l) <= {f}.deadband)"
        return [f"_l = {f}.last", f"if {changed}:", f"    {f}.last = {v}", *_indent(keep("t", v))]


class MinInterval(Filter):
    """Keeps at most one value per interval (the first one of it)."""

    __slots__ = ("interval", "next_t")
    emits_offered = True

    def __init__(self, interval_s: float) -> None:
        self.interval = interval_s
        self.next_t = float("-inf")

    def offer(self, t: float, v: Value) -> Emit:
        if t < self.next_t:
            return None
        self.next_t = t + self.interval
        return (t, v)

    def inline(self, f: str, v: str, keep: Keep, raw: str | None = None) -> list[str]:
        return [f"if t >= {f}.next_t:", f"    {f}.next_t = t + {f}.interval", *_indent(keep("t", v))]


class Period(Filter):
    """Downsampling: the latest value of each period, emitted when the next period starts."""

    __slots__ = ("period", "end", "held")

    def __init__(self, period_s: float) -> None:
        self.period = period_s
        self.end = float("-inf")
        self.held: tuple[float, Value] | None = None

    def offer(self, t: float, v: Value) -> Emit:
        out = None
        if t >= self.end:
            out = self.held
            self.end = (t // self.period + 1) * self.period
        self.held = (t, v)
        return out

    def inline(self, f: str, v: str, keep: Keep, raw: str | None = None) -> list[str]:
        return [f"if t >= {f}.end:", f"    _h = {f}.held", f"    {f}.end = (t // {f}.period + 1) * {f}.period",
                f"    {f}.held = (t, {v})", "    if _h is not None:", *_indent(_indent(keep("_h[0]", "_h[1]"))),
                "else:", f"    {f}.held = (t, {v})"]

    def flush(self) -> Emit:
        held, self.held = self.held, None
        return held


def make_filter(policy: SignalPolicy) -> Callable[[], Filter] | None:
    """A factory of fresh filters for a policy, or None when the policy excludes the signal."""
    match policy.policy:
        case "exclude":
            return None
        case "all":
            return KeepAll
        case "on_change":
            return lambda: OnChange(policy.deadband)
        case "min_interval":
            return lambda: MinInterval(policy.min_interval_ms / 1000)
        case "period":
            return lambda: Period(policy.period_ms / 1000)
    raise ValueError(f"unknown policy {policy.policy!r}")
