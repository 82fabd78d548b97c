"""The codec contract: columns of samples in, bytes out, and back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

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


class Codec(ABC):
    """Encodes a batch's columns; decodes a payload back into samples."""

    name: str
    content_type: str
    content_encoding: str

    @abstractmethod
    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False) -> bytes:
        """The payload; `simulated` puts `"sim": true` in its header (docs/wire-format.md)."""

    @abstractmethod
    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        """(header, samples in time order per signal)."""
