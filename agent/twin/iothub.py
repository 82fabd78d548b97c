"""The IoT Hub control channel: the device twin and direct methods over the iothub sink's SDK client.

The SDK calls handlers on its own thread, so they only queue work for the agent's loop. After every
(re)connect the full twin is fetched and applied property by property here, because the SDK's own
desired-properties sync after connect can be lost (docs/iothub.md). A twin that cannot be fetched is
retried with backoff on this task while telemetry goes on. Every SDK call has a timeout: some
(get_twin) hang forever otherwise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from azure.iot.device import MethodResponse

from agent.liveness import backoff_delay
from agent.twin import guard
from agent.twin.control import ControlChannel, ControlPlane, wait_or_stop
from agent.uplink.iothub import IoTHubSink

log = structlog.get_logger()

QUEUE_MAX = 64
REBUILD_AFTER = 2   # control calls in a row unanswered on a "connected" session before it is rebuilt


class IoTHubChannel(ControlChannel):
    name = "iothub"

    def __init__(self, sink: IoTHubSink) -> None:
        self.sink = sink
        self.timeout_s = sink.cfg.twin_timeout_s
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        self.twin_fetches = 0
        self.fetch_failures = 0
        self.last_fetch_error: str | None = None
        self.rebuilds = 0
        self.timeouts = 0
        self._rebuild_due = False
        self._installed_on: Any = None
        self._fetch_due = True
        self._next_fetch = 0.0
        sink.add_control(self._on_connect)

    # ------------------------------------------------------------- SDK thread / sink -> this task
    def _put(self, item: tuple[str, Any]) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1
                log.warning("control_message_dropped", reason="control queue full", dropped=self.dropped)

    def _on_connect(self) -> None:
        self._fetch_due, self._next_fetch = True, 0.0
        self._put(("connect", None))

    def _from_sdk(self, kind: str, item: Any) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._put, (kind, item))

    def _install(self, client: Any) -> None:
        client.on_twin_desired_properties_patch_received = lambda patch: self._from_sdk("patch", patch)
        client.on_method_request_received = lambda request: self._from_sdk("method", request)
        self._installed_on = client

    # ------------------------------------------------------------- the task
    async def serve(self, plane: ControlPlane, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        while not stop.is_set():
            plane.beat()
            if self._rebuild_due:
                await self._rebuild()
            client = self.sink.client
            if client is not None and self.sink.connected:
                if self._installed_on is not client:
                    self._install(client)
                    self._fetch_due = True
                if self._fetch_due and time.monotonic() >= self._next_fetch:
                    await self._reconcile(plane)
            item = await wait_or_stop(stop, self.queue.get(), 1.0)
            if item is None:
                continue
            kind, payload = item
            try:
                if kind == "patch":
                    await self._desired(plane, payload, full=False)
                elif kind == "method":
                    await self._method(plane, payload)
            except Exception as exc:  # noqa: BLE001 - one message's failure is not the channel's end
                plane._failed(f"iothub {kind}", exc)

    async def _reconcile(self, plane: ControlPlane) -> None:
        """After a (re)connect: fetch the whole twin and apply its desired section, property by property."""
        try:
            twin = await self._call(self.sink.client.get_twin())
        except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds; all mean "try again later"
            self.fetch_failures += 1
            self.last_fetch_error = type(exc).__name__
            delay = backoff_delay(self.fetch_failures, 1.0, 60.0)
            self._next_fetch = time.monotonic() + delay
            log.warning("twin_fetch_failed", error=str(exc) or type(exc).__name__, retry_in_s=round(delay, 1))
            return
        self._fetch_due, self.fetch_failures, self.last_fetch_error = False, 0, None
        self.twin_fetches += 1
        desired = twin.get("desired", {}) if isinstance(twin, dict) else {}
        log.info("twin_fetched", desired_version=desired.get("$version") if isinstance(desired, dict) else None)
        await self._desired(plane, desired, full=True, at_connect=True)
        plane.reporter.reset()

    async def _desired(self, plane: ControlPlane, doc: Any, *, full: bool, at_connect: bool = False) -> None:
        acks = plane.desired_document(doc, full=full, at_connect=at_connect)
        try:
            await self.publish_reported({**acks, "control": plane.state()})
        except Exception as exc:  # noqa: BLE001 - the next reconnect's full twin acks again
            log.warning("desired_ack_failed", version=plane.desired.version, error=str(exc) or type(exc).__name__)

    async def _method(self, plane: ControlPlane, request: Any) -> None:
        status, payload = plane.method(request.name, request.payload)
        try:
            await self._call(self.sink.client.send_method_response(
                MethodResponse.create_from_method_request(request, status, payload)))
        except Exception as exc:  # noqa: BLE001 - the caller times out; nothing else to do
            log.warning("method_response_failed", method=guard.short(request.name), error=str(exc) or type(exc).__name__)

    async def publish_reported(self, patch: dict[str, Any]) -> None:
        if not self.sink.connected:
            raise ConnectionError("iothub not connected")
        await self._call(self.sink.client.patch_twin_reported_properties(patch))

    async def _call(self, coro: Any) -> Any:
        """An SDK call with the twin timeout. Unanswered calls in a row on a session the client calls
        connected mean a dead session (subscriptions lost, a broker gone mid-publish): it is rebuilt."""
        try:
            result = await asyncio.wait_for(coro, self.timeout_s)
        except TimeoutError:
            self.timeouts += 1
            if self.timeouts >= REBUILD_AFTER and self.sink.connected:
                self._rebuild_due = True
            raise
        self.timeouts = 0
        return result

    async def _rebuild(self) -> None:
        self._rebuild_due, self.timeouts = False, 0
        self.rebuilds += 1
        try:
            await self.sink.rebuild("control requests unanswered on a connected session")
        except Exception as exc:  # noqa: BLE001 - the forwarder's sends connect again too
            log.warning("iothub_rebuild_failed", error=str(exc) or type(exc).__name__)

    def connected(self) -> bool:
        return self.sink.connected

    def state(self) -> dict[str, Any]:
        return {"link": "connected" if self.sink.connected else "disconnected", "twin_fetches": self.twin_fetches,
                "twin_fetch_error": self.last_fetch_error, "session_rebuilds": self.rebuilds,
                "dropped_messages": self.dropped}
