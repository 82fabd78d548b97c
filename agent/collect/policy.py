"""Sampling policies: one small stateful filter per (bus, message, signal).

Policies are resolved once per config (first matching rule wins, by exact name or glob, against
the signal name or `Message.Signal`), so the per-frame cost is one call per wanted signal.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import ClassVar

from agent.config import CollectionConfig, SignalPolicy

Value = float | int
Emit = tuple[float, Value] | None


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

    `rule` names the decision as data; agent/compiler.py writes it out as source lines for the
    collector's generated per-message code (no call per signal on the hot path), from the rule and
    the filter's attributes (`deadband`, `interval`, `period`). `offer` is the reference, and tests
    compare both; a filter whose rule the compiler does not know is called through `offer`.
    """

    __slots__ = ()
    rule: ClassVar[str] = "offer"
    emits_offered = False  # True: a kept sample is always the value just offered, at its time

    def offer(self, t: float, v: Value) -> Emit:
        return (t, v)

    def flush(self) -> Emit:
        return None


class KeepAll(Filter):
    __slots__ = ()
    rule = "all"
    emits_offered = True


class OnChange(Filter):
    """Keeps a value when it differs from the last kept one by more than the deadband.

    A repeated NaN counts as unchanged, as an unchanged payload does (the collector skips those
    without decoding), so every decode path keeps the same samples.
    """

    __slots__ = ("deadband", "last")
    rule = "on_change"
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


class MinInterval(Filter):
    """Keeps at most one value per interval (the first one of it)."""

    __slots__ = ("interval", "next_t")
    rule = "min_interval"
    emits_offered = True

    def __init__(self, interval_s: float) -> None:
        self.interval = interval_s
        self.next_t = float("-inf")

    def offer(self, t: float, v: Value) -> Emit:
        if t < self.next_t:
            return None
        self.next_t = t + self.interval
        return (t, v)


class Period(Filter):
    """Downsampling: the latest value of each period, emitted when the next period starts."""

    __slots__ = ("period", "end", "held")
    rule = "period"

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
