"""The control plane: desired state, direct methods and reported state, for whichever channel carries them.

    cloud ─► channel (IoT Hub twin | MQTT topics | local file + socket) ─► ControlPlane ─► Commands (Control) ─► agent

The plane owns everything the cloud may ask of the agent; a channel only moves documents and
answers. Every document enters through `guard` (size, depth, numbers, Unicode) and every property
through `DesiredState`, so the three channels behave the same, and a channel's failure is logged,
counted and reported, never the end of the session or of any other task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent.twin import guard
from agent.twin.desired import DesiredState
from agent.twin.methods import dispatch_method
from agent.twin.reporter import Reporter

if TYPE_CHECKING:
    from agent.status.document import StatusDocument

log = structlog.get_logger()

HEARTBEAT_STALE_S = 60.0   # a channel loop silent this long is wedged (its longest step: a twin timeout plus a
                           # session rebuild): the systemd watchdog goes unfed, systemd restarts the agent


class Control(Protocol):
    """What the control plane may ask of the running agent (implemented by agent.twin.commands.Commands)."""

    def status(self) -> StatusDocument:
        """The status document (its JSON is what `vehicle-agent status --json` shows)."""

    def flush_now(self) -> None:
        """Close the open batches now and wake the forwarder."""

    def set_log_level(self, level: str, duration_s: float | None = None) -> None:
        """Change the log level, optionally reverting after duration_s."""

    def campaigns(self) -> dict[str, Any]:
        """The campaigns with their state."""

    def trigger_campaign(self, campaign_id: str) -> str:
        """Fire a campaign by hand; the event id (KeyError: unknown, ValueError: not active)."""


class ControlChannel(ABC):
    """One transport of the control plane. `serve` runs until stop; it must not raise for a bad
    document or a lost link (it reconnects, or waits for the sink's connection to come back)."""

    name = "channel"

    @abstractmethod
    async def serve(self, plane: ControlPlane, stop: asyncio.Event) -> None:
        """Receive documents and method calls and hand them to `plane`; call `plane.beat()` at least every few s."""

    @abstractmethod
    async def publish_reported(self, patch: dict[str, Any]) -> None:
        """Send a reported patch (acks, state); raise on failure (the reporter retries later)."""

    def connected(self) -> bool:
        """Whether publishing can work now (the reporter waits otherwise)."""
        return True

    def state(self) -> dict[str, Any]:
        return {}


class ControlPlane:
    """Routes documents and methods between a channel and the agent; reports throttled state."""

    def __init__(self, commands: Control, desired: DesiredState, channel: ControlChannel, *,
                 reported_interval_s: float) -> None:
        self.commands = commands
        self.desired = desired
        self.channel = channel
        self.reporter = Reporter(commands.status, channel.publish_reported, interval_s=reported_interval_s,
                                 ready=channel.connected)
        self.methods_answered = 0
        self.errors = 0
        self.last_error: str | None = None
        self._beat = time.monotonic()
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None

    # ----------------------------------------------------------------- documents in
    def desired_document(self, doc: Any, *, full: bool, at_connect: bool = False) -> dict[str, Any]:
        """A parsed desired document (or raw bytes) -> the acks per property (`self.desired.document`
        says how the document as a whole was taken)."""
        try:
            if isinstance(doc, bytes | bytearray | str):
                doc = guard.parse(doc, guard.DESIRED)
            return self.desired.handle(doc, full=full, at_connect=at_connect)
        except guard.Rejected as exc:
            self.desired._document(400, None, f"desired document refused: {exc}")
            return self.desired.reject_document(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the channel: 500, logged
            self._failed("desired", exc)
            self.desired._document(500, None, f"desired document failed: {type(exc).__name__}")
            return {}

    def method(self, name: str, payload: Any) -> tuple[int, Any]:
        """A method call (payload parsed, or raw bytes) -> (status, answer)."""
        self.methods_answered += 1
        try:
            if isinstance(payload, bytes | bytearray | str):
                payload = guard.parse(payload, guard.METHOD) if payload else None
            else:
                guard.check(payload, guard.METHOD)
        except guard.Rejected as exc:
            log.warning("method_refused", method=guard.short(name), error=str(exc))
            return 400, {"error": f"payload refused: {exc}"}
        try:
            status, answer = dispatch_method(self.commands, name, payload)
        except Exception as exc:  # noqa: BLE001
            self._failed("method", exc)
            return 500, {"error": f"method failed: {type(exc).__name__}"}
        log.info("method_called", method=guard.short(name), status=status, channel=self.channel.name)
        return status, answer

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{what}: {type(exc).__name__}"
        log.exception("control_failed", what=what, error=repr(exc))

    # ----------------------------------------------------------------- state out
    def state(self) -> dict[str, Any]:
        """The `control` section of status and the reported properties."""
        return {"channel": self.channel.name, **self.channel.state(), **self.desired.report(),
                "methods_answered": self.methods_answered, "errors": self.errors, "last_error": self.last_error,
                "healthy": self.healthy()}

    # ----------------------------------------------------------------- life
    def beat(self) -> None:
        self._beat = time.monotonic()

    def healthy(self) -> bool:
        """False when the channel's task ended or its loop has not turned for HEARTBEAT_STALE_S, unless the
        agent stops (the last status of a stopped agent said its control plane was wedged)."""
        if self._stop is not None and self._stop.is_set():
            return True
        if self._task is not None and self._task.done():
            return False
        return time.monotonic() - self._beat < HEARTBEAT_STALE_S

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the channel and the reporter until stop; a channel that fails is started again."""
        self._stop = stop
        reporter = asyncio.create_task(self.reporter.run(stop), name="control-reported")
        acks = asyncio.create_task(self._database_acks(stop), name="control-database-acks")
        try:
            while not stop.is_set():
                self._task = asyncio.create_task(self.channel.serve(self, stop), name=f"control-{self.channel.name}")
                try:
                    await self._task
                except Exception as exc:  # noqa: BLE001 - logged, counted, served again
                    self._failed("channel", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            acks.cancel()
            await asyncio.gather(reporter, acks, return_exceptions=True)

    async def _database_acks(self, stop: asyncio.Event) -> None:
        """The `databases` ack whenever the updater changes it (a download or a swap ends long after
        the document came): published at once, retried every few seconds until the channel takes it."""
        updater = self.desired.databases
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(updater.acked.wait(), 1.0)
            if not updater.acked.is_set():
                continue
            updater.acked.clear()
            while not stop.is_set():
                try:
                    if self.channel.connected():
                        await self.channel.publish_reported({"databases": updater.ack, "control": self.state()})
                        break
                except Exception as exc:  # noqa: BLE001 - the transport's errors vary; tried again
                    log.warning("database_ack_not_published", error=str(exc) or type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)


async def wait_or_stop(stop: asyncio.Event, aw: Any, timeout: float) -> Any:
    """`aw`'s result, or None after `timeout` s or once `stop` is set (aw is then cancelled)."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        return None
    finally:
        for f in (task, stopper):
            if not f.done():
                f.cancel()


LOCAL_REPORTED_INTERVAL_S = 5.0


def make_plane(commands: Control, desired: DesiredState, cfg: Any, sink: Any) -> ControlPlane:
    """The control plane for this config: over the cloud sink's connection when there is one,
    else the local channel (desired file + socket in the state dir)."""
    if sink.name == "iothub":
        from agent.twin.iothub import IoTHubChannel  # the SDK is imported only when used

        channel: ControlChannel = IoTHubChannel(sink)
        interval = cfg.sink.iothub.reported_interval_s
    elif sink.name == "mqtt":
        from agent.twin.mqtt import MqttChannel

        channel, interval = MqttChannel(sink), cfg.sink.mqtt.reported_interval_s
    else:
        from agent.twin.local import LocalChannel

        channel, interval = LocalChannel(cfg.resolve(cfg.state_dir)), LOCAL_REPORTED_INTERVAL_S
    return ControlPlane(commands, desired, channel, reported_interval_s=interval)
