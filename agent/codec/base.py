"""The codec contract: columns of samples in, bytes out, and back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from agent.model import Sample

# (bus, message, signal) -> (timestamps, values), in arrival order
Columns = Mapping[tuple[str, str, str], tuple[list[float], list]]
# (message, signal) -> (scale, offset): lets an encoder send raw integers instead of floats
Scaling = Mapping[tuple[str, str], tuple[float, float]]


class RawValues(list):
    """A column holding a signal's raw integers (physical = raw * scale + offset, from `Scaling`).

    The collector's generated code appends the decoder's raw integers straight into such columns
    where it can (integer signals, no labels, no held values), so the columnar encoder need not
    recover them from the scaled floats; every other column holds physical values.
    """

    __slots__ = ()


def physical(key: tuple[str, str, str], values: list, scaling: Scaling | None) -> list:
    """A column's physical values, whichever way it holds them."""
    if type(values) is RawValues:
        scale, offset = (scaling or {})[(key[1], key[2])]
        return [r * scale + offset for r in values]
    return values


INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # the integers msgpack and orjson carry
TIME_LIMIT_S = 1e11  # |t| of a timestamp any codec carries in µs ticks as a 64-bit integer (year ~5000)


class Unencodable(ValueError):
    """A value or timestamp the codec cannot carry exactly; `Codec.admit` the columns, then encode again."""


def carried_int(value: object) -> bool:
    """Whether a number is one msgpack and JSON carry as it is (a bool or an int of at most 64 bits, any float)."""
    return type(value) is not int or INT_MIN <= value <= INT_MAX


def carried(value: object) -> bool:
    """What msgpack carries as it is: integers of at most 64 bits, any float, strings, None."""
    return carried_int(value) and (value is None or isinstance(value, str | int | float))


def time_ok(t: object) -> bool:
    return type(t) is float and -TIME_LIMIT_S < t < TIME_LIMIT_S or type(t) is int and -TIME_LIMIT_S < t < TIME_LIMIT_S


class Codec(ABC):
    """Encodes a batch's columns; decodes a payload back into samples.

    `encode` carries every value exactly or raises `Unencodable`; then `admit` takes out the samples
    it cannot carry (counted per column by the caller), so one bad value never costs its batch.
    """

    name: str
    content_type: str
    content_encoding: str

    @abstractmethod
    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False, event: Mapping[str, Any] | None = None) -> bytes:
        """The payload; `simulated` puts `"sim": true` in its header, `event` a campaign event's
        description as `"event"` (docs/wire-format.md). Raises Unencodable if a value or timestamp
        cannot be carried exactly."""

    def carries_column(self, key: tuple[str, str, str], values: list, scaling: Scaling | None) -> bool:
        """Whether the column's values are carried whatever each one is (e.g. as raw integers)."""
        return False

    def carries(self, value: object) -> bool:
        """Whether this codec carries one physical value exactly (same value, same type)."""
        return carried(value)

    def admit(self, columns: Columns, scaling: Scaling | None = None
              ) -> tuple[dict[tuple[str, str, str], tuple[list[float], list]], dict[tuple[str, str, str], int]]:
        """The columns without the samples this codec cannot carry exactly (or whose time it cannot,
        or that lack a time or a value), and how many each column lost."""
        admitted, refused = {}, {}
        for key, (ts, vs) in columns.items():
            whole = self.carries_column(key, vs, scaling)
            if not whole:
                vs = physical(key, vs, scaling)
            keep = [i for i in range(min(len(ts), len(vs))) if time_ok(ts[i]) and (whole or self.carries(vs[i]))]
            if len(keep) == len(ts) == len(vs):
                admitted[key] = (ts, vs)
                continue
            refused[key] = max(len(ts), len(vs)) - len(keep)
            if keep:
                admitted[key] = ([ts[i] for i in keep], type(vs)(vs[i] for i in keep))
        return admitted, refused

    @abstractmethod
    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        """(header, samples in time order per signal)."""
