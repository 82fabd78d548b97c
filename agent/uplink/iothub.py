"""The `iothub` sink: Azure IoT Hub (or IoT Edge's edgeHub) through the real azure-iot-device SDK.

One stored batch = one IoT Hub message: message_id is the batch id (the cloud drops duplicates of
at-least-once delivery), content type/encoding are the batch's, and custom properties let a route
filter without opening the body. `send` returns only after the hub's PUBACK; the SDK queues
nothing while disconnected, so the store is the queue and the forwarder's backoff the retry.
A wrong key is its own state (`credential_error`) with slow retries. Secrets come from env/files.
The control plane's twin channel (agent/twin/iothub.py) shares the client: it is told of every
(re)connect through `add_control` and does its twin work on its own task, so a twin that cannot be
fetched or applied never holds back telemetry.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from azure.iot.device import X509, Message
from azure.iot.device import exceptions as sdk_errors
from azure.iot.device.aio import IoTHubDeviceClient, IoTHubModuleClient

from agent.config import IoTHubConfig
from agent.model import Batch
from agent.uplink.base import Sink, SinkError
from agent.uplink.secrets import read_secret

log = structlog.get_logger()

SCHEMA_VERSION = "1"


def message_for(batch: Batch) -> Message:
    """The IoT Hub message of a batch, with the properties a route can filter on."""
    msg = Message(batch.payload, message_id=batch.id, content_encoding=batch.content_encoding,
                  content_type=batch.content_type)
    msg.custom_properties.update({
        "schema": SCHEMA_VERSION, "vehicle": batch.vehicle, "bus": ",".join(batch.buses),
        "priority": batch.priority.name, "samples": str(batch.sample_count),
        "first_t": f"{batch.first_t:.3f}", "last_t": f"{batch.last_t:.3f}", "encoding": batch.encoding,
        "simulated": "true" if batch.simulated else "false",  # always set: a route can test simulated = 'false'
    })
    if batch.event:  # a campaign event: a route can send events elsewhere (docs/campaigns.md)
        msg.custom_properties.update(event_properties(batch.event))
    return msg


def root_cause(exc: BaseException) -> str:
    """The layer that failed (DNS, TCP, TLS, authentication) and the innermost error of the chain: the
    SDK's own message ("Could not connect to IoTHub") names neither."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    inner = chain[-1]
    text = f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, sdk_errors.CredentialError) for e in chain) or "UnauthorizedError" in names:
        layer = "authentication"
    elif isinstance(inner, socket.gaierror):
        layer = "DNS"
    elif isinstance(inner, ssl.SSLError) or "TlsExchangeAuthError" in names:
        layer = "TLS"
    elif isinstance(inner, TimeoutError):
        layer = "timeout"
    elif isinstance(inner, OSError):
        layer = "TCP"
    else:
        return text
    return f"{layer}: {text}"


def event_properties(event: Mapping[str, Any]) -> dict[str, str]:
    """A campaign event's description as message properties (strings, as IoT Hub carries them)."""
    props = {"campaign": str(event.get("campaign", "")), "event_id": str(event.get("event_id", "")),
             "trigger_t": f"{float(event.get('trigger_t', 0.0)):.3f}", "expr": str(event.get("expr", ""))[:1024]}
    if "part" in event:
        props["event_part"] = f"{event['part']}/{event['parts']}"
    return props


class IoTHubCredentialsMissing(SinkError):
    """The configured identity has no secret where the config says it is."""


def read_connection_string(cfg: IoTHubConfig, base_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """The connection string from its env var, else the file named by env or config. Never logged."""
    value = read_secret(cfg.connection_string_env, cfg.connection_string_file_env, cfg.connection_string_file,
                        "sink.iothub.connection_string_file", base_dir, os.environ if env is None else env)
    if value is None:
        raise IoTHubCredentialsMissing(
            f"iothub identity {cfg.identity}: set ${cfg.connection_string_env}, or "
            f"${cfg.connection_string_file_env} / sink.iothub.connection_string_file to a file holding it")
    return value


def make_client(cfg: IoTHubConfig, base_dir: Path) -> Any:
    """The SDK client of the configured identity (not yet connected)."""
    kwargs: dict[str, Any] = {"keep_alive": cfg.keep_alive_s}
    if cfg.server_verification_cert:
        path = Path(cfg.server_verification_cert)
        path = path if path.is_absolute() else base_dir / path
        try:
            kwargs["server_verification_cert"] = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"iothub server_verification_cert {path}: {exc.strerror}") from None
    try:
        if cfg.identity == "edge":
            return IoTHubModuleClient.create_from_edge_environment(keep_alive=cfg.keep_alive_s)
        if cfg.identity == "x509":
            if not (cfg.hostname and cfg.device_id and cfg.x509_cert_file and cfg.x509_key_file):
                missing = [k for k in ("hostname", "device_id", "x509_cert_file", "x509_key_file") if not getattr(cfg, k)]
                raise SinkError(f"iothub identity x509 needs sink.iothub.{', '.join(missing)}")
            x509 = X509(cert_file=str(base_dir / cfg.x509_cert_file), key_file=str(base_dir / cfg.x509_key_file),
                        pass_phrase=os.environ.get(cfg.x509_pass_phrase_env) if cfg.x509_pass_phrase_env else None)
            if cfg.gateway_hostname:
                kwargs["gateway_hostname"] = cfg.gateway_hostname
            return IoTHubDeviceClient.create_from_x509_certificate(x509, cfg.hostname, cfg.device_id, **kwargs)
        conn = read_connection_string(cfg, base_dir)
        cls = IoTHubModuleClient if cfg.identity == "module_connection_string" else IoTHubDeviceClient
        return cls.create_from_connection_string(conn, **kwargs)
    except (ValueError, TypeError, OSError, sdk_errors.ClientError) as exc:
        # The SDK's messages name the missing field, never the key itself.
        raise SinkError(f"iothub identity {cfg.identity}: cannot create the client: {exc}") from None


class IoTHubSink(Sink):
    name = "iothub"

    def __init__(self, cfg: IoTHubConfig, *, base_dir: Path | str = ".") -> None:
        self.cfg = cfg
        self.base_dir = Path(base_dir)
        self.client: Any = None
        self.link_state = "disconnected"   # disconnected | connected | credential_error | failing
        self.connects = 0
        self.last_error: str | None = None
        self.last_connect: float | None = None
        self._on_connect: Callable[[], None] | None = None
        self._stale = False
        self.rebuilds = 0
        self._lock = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def add_control(self, on_connect: Callable[[], None]) -> None:
        """Let a control channel share the client: `on_connect()` runs on the agent's loop after every
        (re)connect, ours or the SDK's own; it must only schedule work."""
        self._on_connect = on_connect

    @property
    def connected(self) -> bool:
        return bool(self.client is not None and self.client.connected)

    @property
    def sends_to_output(self) -> bool:
        """Module identities send to an output (`$.on`), which edgeHub and the hub's routes read."""
        return self.cfg.identity in ("edge", "module_connection_string")

    # ------------------------------------------------------------- connection
    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.client is None:
            self.client = make_client(self.cfg, self.base_dir)
            self.client.on_connection_state_change = self._on_connection_change
        await self._ensure_connected()

    def _on_connection_change(self) -> None:
        """SDK thread: tell the control channel (on the agent loop) after the SDK's own reconnect."""
        if self.loop is not None and self.client.connected:
            self.loop.call_soon_threadsafe(self._connected_now)

    def _connected_now(self) -> None:
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception as exc:  # noqa: BLE001 - a listener's bug must not stop telemetry
                log.exception("iothub_listener_failed", error=repr(exc))

    async def rebuild(self, reason: str) -> None:
        """A session that looks connected but answers nothing (subscriptions lost, a half-open link): drop
        the client and connect a new one (the control channel then subscribes and fetches the twin again)."""
        async with self._lock:
            old, self.client = self.client, None
            self.link_state, self._stale = "disconnected", False
            self.rebuilds += 1
        if old is not None:
            try:
                await asyncio.wait_for(old.shutdown(), 10)
            except Exception as exc:  # noqa: BLE001 - the old client is abandoned either way
                log.warning("iothub_shutdown_failed", error=str(exc) or type(exc).__name__)
        log.warning("iothub_session_rebuilt", reason=reason, rebuilds=self.rebuilds)
        await self.open()

    async def _ensure_connected(self) -> None:
        async with self._lock:
            if self.client.connected and self.link_state == "connected":
                return
            try:
                if not self.client.connected:
                    await asyncio.wait_for(self.client.connect(), self.cfg.connect_timeout_s)
            except sdk_errors.CredentialError as exc:
                self._failed("credential_error", exc)
                log.error("iothub_credentials_rejected", identity=self.cfg.identity,
                          error=type(exc).__name__, retry_in_s=self.cfg.credential_retry_s,
                          action="check the device key / certificate; retrying slowly")
                raise SinkError("iothub rejected the credentials (wrong key, expired or revoked identity)",
                                retry_after=self.cfg.credential_retry_s) from None
            except (TimeoutError, sdk_errors.ClientError, OSError) as exc:
                self._failed("failing", exc)
                raise SinkError(f"iothub connect failed: {self.last_error}") from None
            self.link_state = "connected"
            self.connects += 1
            self.last_connect = time.time()
            self.last_error = None
            log.info("iothub_connected", identity=self.cfg.identity, connects=self.connects)
            self._connected_now()

    def _failed(self, state: str, exc: BaseException) -> None:
        self.link_state = state
        self.last_error = root_cause(exc)

    # ------------------------------------------------------------- send
    async def send(self, batch: Batch) -> None:
        if self.client is None:
            await self.open()
        elif self._stale:
            await self.rebuild("a send timed out on a connected session")
        elif not self.client.connected or self.link_state != "connected":
            await self._ensure_connected()
        msg = message_for(batch)
        try:
            if self.sends_to_output:
                coro = self.client.send_message_to_output(msg, self.cfg.output_name)
            else:
                coro = self.client.send_message(msg)
            await asyncio.wait_for(coro, self.cfg.send_timeout_s)
        except sdk_errors.CredentialError as exc:
            self._failed("credential_error", exc)
            raise SinkError("iothub rejected the credentials", retry_after=self.cfg.credential_retry_s) from None
        except (TimeoutError, sdk_errors.ClientError, OSError) as exc:
            self._failed("failing", exc)
            # No acknowledgement on a link the client still calls connected: a dead session (a broker that
            # vanished mid-publish can leave the SDK there). The next send rebuilds it.
            self._stale = isinstance(exc, TimeoutError) and self.connected
            raise SinkError(f"iothub send of batch {batch.id} failed: {self.last_error}") from None

    async def close(self) -> None:
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.shutdown(), 10)
            except Exception as exc:  # noqa: BLE001 - closing never raises
                log.warning("iothub_shutdown_failed", error=str(exc) or type(exc).__name__)
        self.link_state = "disconnected"

    def state(self) -> dict[str, Any]:
        connected = self.connected
        link = "connected" if connected else ("disconnected" if self.link_state == "connected" else self.link_state)
        return {"identity": self.cfg.identity, "link": link, "connected": connected,
                "connects": self.connects, "last_connect": self.last_connect, "link_error": self.last_error,
                "session_rebuilds": self.rebuilds}
