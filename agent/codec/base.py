"""The codec contract: columns of samples in, bytes out, and back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from agent.model import Sample

# (bus, message, signal) -> (timestamps, values), in arrival order
Columns = Mapping[tuple[str, str, str], tuple[list[float], list]]
# (message, signal) -> (scale, offset): lets an encoder send raw integers instead of floats
Scaling = Mapping[tuple[str, str], tuple[float, float]]


class Codec(ABC):
    """Encodes a batch's columns; decodes a payload back into samples."""

    name: str
    content_type: str
    content_encoding: str

    @abstractmethod
    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None) -> bytes: ...

    @abstractmethod
    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        """(header, samples in time order per signal)."""
