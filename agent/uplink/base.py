"""The sink contract: `send` returns only when the destination acknowledged the batch.

Sinks are async context managers (open on enter, close on exit). A failed send raises SinkError;
the forwarder retries with backoff and the store keeps the batch until a send returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from agent.model import Batch


class SinkError(Exception):
    """A send that did not reach an acknowledgement; `retry_after` hints a minimum wait (seconds)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Control(Protocol):
    """What a cloud transport may ask of the running agent (implemented by agent.app.Agent).

    Twin-capable sinks (IoT Hub, MQTT) receive it through `attach` and route desired state,
    direct methods and reported state through it: one apply path, several transports.
    """

    def handle_desired(self, doc: dict[str, Any], *, full: bool) -> dict[str, Any] | None:
        """Apply a desired document (full twin or patch); returns the acks to report, None if stale."""

    def status(self) -> dict[str, Any]:
        """The status document (as `vehicle-agent status --json` shows it)."""

    def flush_now(self) -> None:
        """Close the open batches now and wake the forwarder."""

    def set_log_level(self, level: str, duration_s: float | None = None) -> None:
        """Change the log level, optionally reverting after duration_s."""


class Sink(ABC):
    name: str = "sink"
    control: Control | None = None

    def attach(self, control: Control) -> None:
        """Called once by the agent before `open`; twin-capable sinks keep it."""
        self.control = control

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
