"""What the collector's generated code works on: slots (a wanted signal's filter and the open
batch's column lists it appends to) and held frames (Period downsampling on whole frames). The code
itself is written by agent/compiler.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cantools.database.can.signal import Signal

from agent.collect.policy import Filter, Period
from agent.decode.fast import compile_values
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


def held_frames(slots: list[Slot], signals: Sequence[Signal], length: int, name: str = "") -> list[HeldFrames]:
    """The plain message's Period slots grouped by period, each group decoding its held frame."""
    by_period: dict[float, list[tuple[Slot, Signal]]] = {}
    for slot, sig in zip(slots, signals, strict=True):
        if type(slot.filt) is Period:
            by_period.setdefault(slot.filt.period, []).append((slot, sig))
    return [HeldFrames(Period(period), [slot for slot, _ in members],
                       compile_values([sig for _, sig in members], length, f"{name} held {period:g} s"))
            for period, members in by_period.items()]
