"""Pre-/post-trigger history: one bounded ring of raw frames per message a campaign wants.

A ring holds the time and the payload of every frame of its message in two `deque(maxlen=...)` of
the same length: two C-level appends a frame whatever the number of wanted signals, no object
created (the float and the bytes are the frame's own; a `(t, payload)` tuple per frame cost more
than the appends, in allocation and in the garbage collector's passes over every buffered tuple),
and nothing decoded until an event needs it (then with the same compiled decoder as the collector,
so samples equal cantools' decode). Each ring's length is bounded by count, sized from time: the
longest pre_s + post_s of the campaigns that read it, at the message's cycle time with headroom;
all rings together stay under one global memory budget (sizes scaled down when they would not fit,
and reported).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import compress
from operator import and_
from typing import TypeVar

K = TypeVar("K", bound=Hashable)  # whatever names a ring (the engine's message keys)

DEFAULT_BUDGET_BYTES = 20 * 1024 * 1024   # FleetWise's sample buffer
DEFAULT_CYCLE_MS = 10.0                    # a message without GenMsgCycleTime is taken as 100 Hz
HEADROOM = 1.5                             # messages sent faster than their database says
_ENTRY_BYTES = 8 + 8 + 24 + 33             # two deque slots, the float, the bytes header


def entry_bytes(length: int) -> int:
    """Memory of one buffered frame of a `length`-byte message (CPython 3.11, 64-bit)."""
    return _ENTRY_BYTES + length


@dataclass(frozen=True)
class RingNeed:
    """What one message's ring must hold: `seconds` of frames at `cycle_ms` (decode.cycle_time_ms), `length` bytes each."""

    seconds: float
    cycle_ms: float | None
    length: int

    @property
    def frames(self) -> int:
        cycle = self.cycle_ms or DEFAULT_CYCLE_MS
        return math.ceil(self.seconds * 1000.0 / cycle * HEADROOM) + 16


def plan_capacities(needs: dict[K, RingNeed], budget_bytes: int) -> tuple[dict[K, int], bool]:
    """Ring lengths by key within `budget_bytes`; True when they had to be cut to fit."""
    want = {key: need.frames for key, need in needs.items()}
    total = sum(n * entry_bytes(needs[key].length) for key, n in want.items())
    if total <= budget_bytes:
        return want, False
    scale = budget_bytes / total
    return {key: max(2, int(n * scale)) for key, n in want.items()}, True


class FrameRing:
    """The newest frames of one message, bounded by count; knows when it dropped frames."""

    __slots__ = ("times", "payloads", "length")

    def __init__(self, capacity: int, length: int, keep: FrameRing | None = None) -> None:
        """`keep`: a previous ring of the message whose newest frames this one starts with."""
        self.times: deque[float] = deque(keep.times if keep is not None else (), maxlen=capacity)
        self.payloads: deque[bytes] = deque(keep.payloads if keep is not None else (), maxlen=capacity)
        self.length = length

    def append(self, t: float, data: bytes) -> None:
        """One frame (the generated steps append to `times` and `payloads` themselves)."""
        self.times.append(t)
        self.payloads.append(data)

    @property
    def newest(self) -> float | None:
        return self.times[-1] if self.times else None

    @property
    def nbytes(self) -> int:
        return len(self.times) * entry_bytes(self.length)

    @property
    def capacity_bytes(self) -> int:
        return (self.times.maxlen or 0) * entry_bytes(self.length)

    def between(self, lo: float, hi: float, exclusive: bool) -> tuple[list[float], list[bytes], bool]:
        """Times and payloads of the frames with lo <= t <= hi (lo < t when `exclusive`), in ring
        order, and whether frames of that span were already overwritten (the ring is full and its
        oldest frame is inside the span). Selected at C level: a ring holds thousands of frames."""
        times = self.times
        lost = len(times) == times.maxlen and bool(times) and times[0] > lo
        keep = list(map(and_, map(lo.__lt__ if exclusive else lo.__le__, times), map(hi.__ge__, times)))
        return list(compress(times, keep)), list(compress(self.payloads, keep)), lost
