"""The MQTT control channel: desired state, methods and reported state over the mqtt sink's connection.

The sink subscribes this channel's topics on every connect and hands each message to `_incoming`,
which only queues it: parsing and applying happen here, on the control task, so no document can
stall or end the session that carries telemetry. Reported state is one retained document, merged
from patches; while disconnected it is kept and the whole of it goes out on the next connect.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from agent.config import deep_merge
from agent.twin import guard
from agent.twin.control import ControlChannel, ControlPlane, wait_or_stop
from agent.uplink.base import SinkError
from agent.uplink.mqtt import MqttSink

log = structlog.get_logger()

QUEUE_MAX = 64       # control messages waiting; beyond, the oldest are dropped (and counted)
_CONNECTED = "$connected"


class MqttChannel(ControlChannel):
    name = "mqtt"

    def __init__(self, sink: MqttSink) -> None:
        self.sink = sink
        self.topics = sink.topics
        self.queue: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.dropped = 0
        self.reported: dict[str, Any] = {}
        sink.add_control([(self.topics.desired, 1), (self.topics.method_requests, 1)],
                         self._incoming, lambda: self._incoming(_CONNECTED, b"", False))

    def _incoming(self, topic: str, payload: bytes, retained: bool) -> None:
        """On the sink's session: queue only."""
        while True:
            try:
                self.queue.put_nowait((topic, payload, retained))
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1
                log.warning("control_message_dropped", reason="control queue full", dropped=self.dropped)

    async def serve(self, plane: ControlPlane, stop: asyncio.Event) -> None:
        while not stop.is_set():
            plane.beat()
            item = await wait_or_stop(stop, self.queue.get(), 1.0)
            if item is None:
                continue
            topic, payload, retained = item
            try:
                await self._handle(plane, topic, payload, retained)
            except Exception as exc:  # noqa: BLE001 - one message's failure is not the channel's end
                plane._failed("mqtt message", exc)

    async def _handle(self, plane: ControlPlane, topic: str, payload: bytes, retained: bool) -> None:
        if topic == _CONNECTED:
            plane.reporter.reset()
            if self.reported:
                await self._publish_whole()
        elif topic == self.topics.desired:
            if not payload:
                return  # a cleared retained message: nothing desired
            # Retained means "delivered because we subscribed": the broker's state at connect.
            acks = plane.desired_document(payload, full=True, at_connect=retained)
            try:
                await self.publish_reported({**acks, "$desired": dict(plane.desired.document),
                                             "control": plane.state()})
            except SinkError as exc:  # kept in the document: it goes out whole on the next connect
                log.warning("desired_ack_failed", error=str(exc))
        elif (name := self.topics.method_name(topic)) is not None:
            if retained:  # a request someone left retained would run again at every connect
                log.warning("method_request_retained_ignored", method=guard.short(name),
                            action="clear the retained message; requests are published without retain")
                return
            await self._method(plane, name, payload)

    async def _method(self, plane: ControlPlane, name: str, payload: bytes) -> None:
        request_id = None
        try:
            request = guard.parse(payload, guard.METHOD) if payload else {}
        except guard.Rejected as exc:
            status, body = 400, {"error": f"request refused: {exc}"}
        else:
            request = request if isinstance(request, dict) else {}
            rid = request.get("id")
            request_id = rid if isinstance(rid, str | int) and not isinstance(rid, bool) and len(str(rid)) <= 128 else None
            status, body = plane.method(name, request.get("payload"))
        response = json.dumps({"id": request_id, "status": status, "payload": body}, default=str)
        try:
            await self.sink.publish(self.topics.method_response(name), response.encode())
        except SinkError as exc:
            log.warning("method_response_failed", method=guard.short(name), error=str(exc))

    async def publish_reported(self, patch: dict[str, Any]) -> None:
        """Merge a patch into the reported document and publish the whole of it, retained.

        While disconnected the merge is kept and the whole document goes out on the next connect.
        """
        self.reported = deep_merge(self.reported, patch)
        if self.sink.connected:
            await self._publish_whole()

    async def _publish_whole(self) -> None:
        data = json.dumps(self.reported, default=str, separators=(",", ":")).encode()
        await self.sink.publish(self.topics.reported, data, retain=True)

    def connected(self) -> bool:
        return self.sink.connected

    def state(self) -> dict[str, Any]:
        return {"link": "connected" if self.sink.connected else "disconnected", "dropped_messages": self.dropped,
                "queued": self.queue.qsize()}
