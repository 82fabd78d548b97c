"""The `mqtt` sink: any MQTT 3.1.1 broker, with the same twin-style remote control as IoT Hub.

One session task owns the connection (aiomqtt style: one async context, no callbacks leaking into
the agent): connect, subscribe to desired state and method requests, announce "online", then serve
incoming messages until the link drops; reconnect with capped, jittered backoff and subscribe again.
`send` publishes a batch at QoS 1 and returns only after the broker's PUBACK, so the store deletes
only what the broker has. The control plane's MQTT channel (agent/twin/mqtt.py) shares the
connection: it registers its topics and a callback that only queues (`add_control`), so nothing it
does runs on, or can end, the session. Layout: docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.config import MqttConfig
from agent.liveness import backoff_delay
from agent.model import Batch
from agent.uplink.base import Sink, SinkError
from agent.uplink.secrets import read_secret

logging.getLogger("mqtt").addFilter(lambda r: "renamed asyncio-mqtt" not in r.getMessage())
from asyncio_mqtt import Client, MqttError, Will  # noqa: E402 - after the filter that silences its banner
from asyncio_mqtt.error import MqttConnectError  # noqa: E402

log = structlog.get_logger()

HEADER_VERSION = 1
_LEN = struct.Struct(">H")
CREDENTIAL_CODES = {4: "bad user name or password", 5: "not authorised"}


# ------------------------------------------------------------------------------ payload layout
def batch_header(batch: Batch) -> dict[str, Any]:
    """The batch metadata MQTT 3.1.1 cannot carry as properties (docs/mqtt.md)."""
    return {"v": HEADER_VERSION, "id": batch.id, "ct": batch.content_type, "ce": batch.content_encoding,
            "vehicle": batch.vehicle, "buses": list(batch.buses), "priority": batch.priority.name,
            "samples": batch.sample_count, "first_t": batch.first_t, "last_t": batch.last_t,
            "simulated": batch.simulated, **({"event": dict(batch.event)} if batch.event else {})}


def encode_message(batch: Batch) -> bytes:
    """2-byte big-endian header length, the header as compact JSON, then the batch payload as stored."""
    header = json.dumps(batch_header(batch), separators=(",", ":")).encode()
    return _LEN.pack(len(header)) + header + batch.payload


def decode_message(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The inverse of encode_message: (header, batch payload)."""
    if len(data) < _LEN.size:
        raise ValueError("not a vehicle-agent MQTT message: shorter than its header length")
    (n,) = _LEN.unpack_from(data)
    try:
        header = json.loads(data[_LEN.size:_LEN.size + n])
    except ValueError as exc:
        raise ValueError(f"not a vehicle-agent MQTT message: header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("v") != HEADER_VERSION:
        raise ValueError(f"unsupported MQTT batch header version {header.get('v') if isinstance(header, dict) else '?'}")
    return header, data[_LEN.size + n:]


class Topics:
    """`<prefix>/<vehicle>/...`: telemetry per priority, twin desired/reported, status, methods."""

    def __init__(self, prefix: str, vehicle: str) -> None:
        self.root = f"{prefix.strip('/')}/{vehicle}" if prefix.strip("/") else vehicle

    def telemetry(self, priority: str) -> str:
        return f"{self.root}/telemetry/{priority}"

    @property
    def desired(self) -> str:
        return f"{self.root}/twin/desired"

    @property
    def reported(self) -> str:
        return f"{self.root}/twin/reported"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def method_requests(self) -> str:
        return f"{self.root}/methods/+/request"

    def method_response(self, name: str) -> str:
        return f"{self.root}/methods/{name}/response"

    def method_name(self, topic: str) -> str | None:
        prefix, suffix = f"{self.root}/methods/", "/request"
        if topic.startswith(prefix) and topic.endswith(suffix):
            return topic[len(prefix):-len(suffix)] or None
        return None


def read_password(cfg: MqttConfig, base_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """The password from its env var, else the file named by env or config; None without one. Never logged."""
    return read_secret(cfg.password_env, cfg.password_file_env, cfg.password_file, "sink.mqtt.password_file",
                       base_dir, os.environ if env is None else env)


# ------------------------------------------------------------------------------ the sink
MessageCallback = Callable[[str, bytes, bool], None]


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, cfg: MqttConfig, *, vehicle: str, base_dir: Path | str = ".") -> None:
        self.cfg = cfg
        self.base_dir = Path(base_dir)
        self.topics = Topics(cfg.topic_prefix, vehicle)
        self.client_id = cfg.client_id or vehicle
        self.client: Client | None = None
        self.link_state = "disconnected"  # disconnected | connecting | connected | credential_error | failing
        self.connects = 0
        self.last_error: str | None = None
        self.last_connect: float | None = None
        self.session_restarts = 0
        self._subscriptions: list[tuple[str, int]] = []
        self._on_message: MessageCallback | None = None
        self._on_connect: Callable[[], None] | None = None
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._session_task: asyncio.Task | None = None

    def add_control(self, subscriptions: list[tuple[str, int]], on_message: MessageCallback,
                    on_connect: Callable[[], None]) -> None:
        """Let a control channel share the connection: its topics are subscribed on every connect;
        `on_message(topic, payload, retained)` and `on_connect()` must only queue work (they run on the session)."""
        self._subscriptions = list(subscriptions)
        self._on_message, self._on_connect = on_message, on_connect

    # ------------------------------------------------------------- connection
    def _tls(self) -> ssl.SSLContext | None:
        cfg = self.cfg
        if not (cfg.tls or cfg.ca_file or cfg.cert_file):
            return None
        resolve = (lambda p: str(Path(p) if Path(p).is_absolute() else self.base_dir / p))  # noqa: E731
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(cfg, key)
            if value and not Path(resolve(value)).is_file():
                raise SinkError(f"sink.mqtt.{key}: file not found: {resolve(value)}")
        try:
            ctx = ssl.create_default_context(cafile=resolve(cfg.ca_file) if cfg.ca_file else None)
            if cfg.cert_file:
                ctx.load_cert_chain(resolve(cfg.cert_file), resolve(cfg.key_file) if cfg.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(f"mqtt TLS files: {exc}") from None
        return ctx

    def _client(self) -> Client:
        tls = self._tls()
        port = self.cfg.port or (8883 if tls else 1883)
        return Client(self.cfg.host, port, username=self.cfg.username,
                      password=read_password(self.cfg, self.base_dir) if self.cfg.username else None,
                      client_id=self.client_id, tls_context=tls, keepalive=self.cfg.keepalive_s,
                      clean_session=True, will=Will(self.topics.status, b"offline", qos=1, retain=True))

    async def open(self) -> None:
        self._tls()  # bad TLS files are a config error the user should see at once
        self._ensure_session()

    def _ensure_session(self) -> None:
        """Start the session task, or start it again if it ended (it never should: a bug must not
        leave the agent without a link while it looks alive)."""
        task = self._session_task
        if task is not None and not task.done():
            return
        if task is not None and not task.cancelled():
            self.session_restarts += 1
            log.error("mqtt_session_ended", error=repr(task.exception()), restarts=self.session_restarts,
                      action="starting a new session")
        self._session_task = asyncio.create_task(self._session_loop(), name="mqtt-session")

    async def _session_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                await self._session()
                failures = 0
                delay = 0.5
            except MqttConnectError as exc:
                failures += 1
                if exc.rc in CREDENTIAL_CODES:
                    self._failed("credential_error", f"broker refused the credentials: {CREDENTIAL_CODES[exc.rc]}")
                    log.error("mqtt_credentials_rejected", host=self.cfg.host, username=self.cfg.username,
                              reason=CREDENTIAL_CODES[exc.rc], retry_in_s=self.cfg.credential_retry_s,
                              action="check the user name and the password (env/file)")
                    delay = self.cfg.credential_retry_s
                else:
                    self._failed("failing", str(exc))
                    delay = backoff_delay(failures, 0.5, 30.0)
            except (MqttError, OSError, TimeoutError, SinkError) as exc:
                failures += 1
                self._failed("failing", str(exc) or type(exc).__name__)
                delay = backoff_delay(failures, 0.5, 30.0)
            except Exception as exc:  # noqa: BLE001 - whatever it was, the session is rebuilt, loudly
                failures += 1
                log.exception("mqtt_session_failed", error=repr(exc))
                self._failed("failing", f"session failed: {type(exc).__name__}")
                delay = backoff_delay(failures, 0.5, 30.0)
            if self._stop.is_set():
                break
            if self.link_state != "credential_error":
                log.warning("mqtt_disconnected", error=self.last_error, retry_in_s=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self) -> None:
        """One connection: subscribe, announce, serve incoming messages until the link drops."""
        self.link_state = "connecting"
        client = self._client()
        await asyncio.wait_for(client.connect(timeout=int(self.cfg.connect_timeout_s)), self.cfg.connect_timeout_s + 1)
        try:
            # The client as its own async context manager from here: its exit collects an unexpected
            # disconnect (raised here, handled by the loop) instead of leaving it unretrieved.
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_exit(client)
                messages = await stack.enter_async_context(client.messages())
                if self._subscriptions:
                    await client.subscribe(self._subscriptions)
                await client.publish(self.topics.status, b"online", qos=1, retain=True)
                self.client = client
                self.link_state, self.last_error = "connected", None
                self.connects += 1
                self.last_connect = time.time()
                self._connected.set()
                log.info("mqtt_connected", host=self.cfg.host, client_id=self.client_id, connects=self.connects)
                self._notify(self._on_connect)
                async for message in messages:
                    # asyncio-mqtt's hint is the publish side's (str, int, float too); received, it is bytes
                    payload = bytes(message.payload or b"")  # type: ignore[arg-type]
                    self._notify(self._on_message, str(message.topic), payload,
                                 bool(message.retain))
        finally:
            self._connected.clear()
            self.client = None
            if self.link_state == "connected":
                self.link_state = "disconnected"

    @staticmethod
    def _notify(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - a listener's bug must not end the session
            log.exception("mqtt_listener_failed", error=repr(exc))

    def _failed(self, state: str, error: str) -> None:
        self.link_state, self.last_error = state, error

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 on the current connection (for the control channel); SinkError when there is none."""
        client = self.client
        if client is None:
            raise SinkError("mqtt not connected")
        try:
            await asyncio.wait_for(client.publish(topic, payload, qos=1, retain=retain,
                                                  timeout=int(self.cfg.publish_timeout_s)),
                                   self.cfg.publish_timeout_s + 1)
        except (MqttError, OSError, TimeoutError) as exc:
            raise SinkError(f"mqtt publish to {topic} not acknowledged: {exc or type(exc).__name__}") from None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------- telemetry
    async def send(self, batch: Batch) -> None:
        self._ensure_session()
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.cfg.connect_timeout_s)
            except TimeoutError:
                retry = self.cfg.credential_retry_s if self.link_state == "credential_error" else None
                raise SinkError(f"mqtt broker {self.cfg.host} not connected: {self.last_error or self.link_state}",
                                retry_after=retry) from None
        client = self.client
        if client is None:
            raise SinkError("mqtt link dropped before the send")
        try:
            await asyncio.wait_for(
                client.publish(self.topics.telemetry(batch.priority.name), encode_message(batch), qos=1,
                               timeout=int(self.cfg.publish_timeout_s)),
                self.cfg.publish_timeout_s + 1)
        except (MqttError, OSError, TimeoutError) as exc:
            raise SinkError(f"mqtt publish of batch {batch.id} not acknowledged: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        """Say "offline" (retained) like the last will would, then end the session."""
        self._stop.set()
        if self.client is not None:
            with contextlib.suppress(MqttError, OSError, TimeoutError):
                await self.client.publish(self.topics.status, b"offline", qos=1, retain=True, timeout=2)
        if self._session_task is not None:
            self._session_task.cancel()
            await asyncio.gather(self._session_task, return_exceptions=True)
            self._session_task = None
        self.link_state = "disconnected"

    def state(self) -> dict[str, Any]:
        return {"broker": f"{self.cfg.host}:{self.cfg.port or (8883 if self.cfg.tls or self.cfg.ca_file else 1883)}",
                "link": "connected" if self._connected.is_set() else
                        ("disconnected" if self.link_state == "connected" else self.link_state),
                "connected": self._connected.is_set(), "connects": self.connects,
                "last_connect": self.last_connect, "link_error": self.last_error,
                "session_restarts": self.session_restarts, "topics": self.topics.root}
