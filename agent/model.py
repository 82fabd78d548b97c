"""The values that flow between the pipeline's parts.

A part knows the parts to its left only through these values: frames from sources, samples from
the collector, batches from the batcher. Frames are plain tuples inside the hot path because a
`can.Message` costs ~0.5 us to build; python-can stays the boundary of the sources.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# The times a frame may have: 1980-01-01 and 2200-01-01 UTC. The collector refuses (and counts) the
# frames of other times, and a replay does not pace by them: no clock gives them, a damaged log does.
TIME_MIN, TIME_MAX = 315532800.0, 7258118400.0


class Frame(NamedTuple):
    """One CAN frame as it leaves a source: receive time (s since epoch), arbitration id, payload."""

    t: float
    id: int
    data: bytes
    is_fd: bool = False
    is_error: bool = False


class Sample(NamedTuple):
    """One kept signal value: time, bus name, message name, signal name, value (number or label)."""

    t: float
    bus: str
    message: str
    signal: str
    value: float | int | str


class Priority(enum.IntEnum):
    """Upload priority of a batch: higher drains first and is evicted last."""

    low = 0
    normal = 1
    high = 2


@dataclass(frozen=True, slots=True)
class Batch:
    """An encoded, immutable group of samples: the unit that is stored, sent and acknowledged.

    `id` stays the same across resends so the cloud can drop duplicates of at-least-once delivery.
    """

    id: str
    priority: Priority
    encoding: str
    content_type: str
    content_encoding: str
    payload: bytes
    sample_count: int
    first_t: float
    last_t: float
    created: float
    vehicle: str = ""
    buses: tuple[str, ...] = field(default_factory=tuple)
    simulated: bool = False  # holds samples of the built-in simulator: never mistake it for a vehicle's data
    event: Mapping[str, Any] | None = None  # a campaign event's batch: campaign, event_id, trigger_t, expr, ...

    @property
    def size(self) -> int:
        return len(self.payload)
