"""The sink contract: `send` returns only when the destination acknowledged the batch.

Sinks are async context managers (open on enter, close on exit). A failed send raises SinkError;
the forwarder retries with backoff and the store keeps the batch until a send returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from agent.model import Batch


class SinkError(Exception):
    """A send that did not reach an acknowledgement; `retry_after` hints a minimum wait (seconds)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnsendableBatch(Exception):
    """A batch this sink cannot prepare for sending (its stored bytes do not decode): retrying cannot
    help, so the forwarder quarantines it and goes on with the next batch."""


class Sink(ABC):
    """Sends batches, nothing else. A cloud sink may let the control plane (agent/twin/) share its
    connection: the control channel of that transport subscribes through it, the sink never calls back up."""

    name: str = "sink"

    async def open(self) -> None:
        """Connect or prepare; may raise SinkError (the forwarder retries)."""

    async def close(self) -> None:
        """Release connections; never raises."""

    @abstractmethod
    async def send(self, batch: Batch) -> None:
        """Deliver one batch and wait for its acknowledgement."""

    def state(self) -> dict[str, Any]:
        """Sink-specific health for status and the twin (connected, last error, ...)."""
        return {}

    async def __aenter__(self) -> Sink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
