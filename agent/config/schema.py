"""The config's models: one immutable, validated object for the file, the environment and the cloud.

The same models validate the YAML file, environment overrides and the device twin's desired
properties, so `vehicle-agent schema` (`json_schema`) is the contract for all three. Loading a file
is `agent.config.loading`; what differs between two configs and how a document is laid over
another is `agent.config.diff`; what the cloud may write is `agent.config.cloud`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from agent.campaigns.buffer import DEFAULT_BUDGET_BYTES
from agent.campaigns.model import Campaign, check_campaigns
from agent.model import Priority
from agent.ota.model import OtaConfig, SoftwareUpdate

IOTHUB_MAX_MESSAGE_BYTES = 256 * 1024
# Bounds of the numbers the cloud may write (docs/iothub.md, "Limits"): beyond them a value is a typo
# or an attack, never a setting.
MAX_BITRATE = 20_000_000           # CAN FD data phases reach 8-12 Mbit/s
MAX_INTERVAL_MS = 86_400_000       # a day
MAX_STORE_BYTES = 2**40
MIN_STORE_BATCHES = 4              # the store holds several batches, or it evicts what it just stored
MIN_TTL_S, MAX_TTL_S = 60.0, 10 * 365 * 86400.0



class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BusConfig(_Model):
    """One CAN bus: where frames come from and which databases decode them."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="Bus name used in samples, status and topics, e.g. 'powertrain'.")
    interface: str = Field(
        "auto",
        description="python-can interface: socketcan, virtual, pcan, kvaser, ... or 'auto': socketcan if the "
        "channel exists on this machine; if not, with the file sink the built-in simulator (marked simulated), "
        "with a cloud sink socketcan waiting for the channel to appear (state 'missing').",
    )
    channel: str = Field("vcan0", description="python-can channel, e.g. can0, vcan0.")
    bitrate: int | None = Field(None, gt=0, le=MAX_BITRATE, description="Nominal bitrate (interfaces that set it).")
    data_bitrate: int | None = Field(None, gt=0, le=MAX_BITRATE, description="CAN FD data bitrate.")
    fd: bool = Field(False, description="Open the bus in CAN FD mode.")
    databases: list[str] = Field(
        min_length=1, max_length=32,
        description="Database files for this bus (anything cantools loads: dbc, kcd, arxml, sym). From the "
        "cloud: names inside databases_dir only.",
    )
    strict: bool = Field(
        True,
        description="Load the databases strictly (cantools' default). false: also load sloppy OEM files "
        "(overlapping signals, signals that do not fit their message); cantools' complaints are logged "
        "once per file and listed by check-config, values are still exactly cantools'.",
    )
    replay: str | None = Field(
        None, description="Read frames from this log (candump .log, .asc, .blf) instead of a live bus."
    )
    replay_rate: float = Field(
        0.0, ge=0, le=1000, description="Replay speed: 1.0 = real time, 0 = as fast as possible."
    )
    simulate: bool | None = Field(
        None,
        description="Run the built-in vehicle simulator on this bus's virtual channel; its batches are marked "
        "simulated (default: only when interface 'auto' finds no channel and the sink is file; false: never).",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Extra python-can Bus() keyword arguments.")


PolicyKind = Literal["all", "on_change", "min_interval", "period", "exclude"]
PriorityName = Literal["low", "normal", "high"]  # Priority's names, as the config and the twin spell them


def _policy_needs(policy: str, parameter: str) -> dict[str, Any]:
    """JSON Schema: this policy requires a positive parameter (what `_needs_its_parameter` checks)."""
    return {"if": {"properties": {"policy": {"const": policy}}, "required": ["policy"]},
            "then": {"required": [parameter], "properties": {parameter: {"exclusiveMinimum": 0}}}}


class SignalPolicy(_Model):
    """How samples of the matched signals are kept."""

    model_config = ConfigDict(json_schema_extra={"allOf": [_policy_needs("min_interval", "min_interval_ms"),
                                                           _policy_needs("period", "period_ms")]})

    match: str = Field("*", min_length=1, max_length=256, description="Signal name or glob (`Wheel*`); also matches 'Message.Signal'.")
    policy: PolicyKind = Field("all", description="all | on_change | min_interval | period | exclude.")
    deadband: float = Field(0.0, ge=0, le=1e12, description="on_change: keep only changes larger than this (absolute).")
    min_interval_ms: int = Field(0, ge=0, le=MAX_INTERVAL_MS,
                                 description="min_interval: at most one sample per interval (at most a day).")
    period_ms: int = Field(0, ge=0, le=MAX_INTERVAL_MS,
                           description="period: the latest value once per period (downsampling; at most a day).")
    priority: PriorityName = Field("normal", description="Upload priority of these samples.")

    @model_validator(mode="after")
    def _needs_its_parameter(self) -> SignalPolicy:
        if self.policy == "min_interval" and self.min_interval_ms <= 0:
            raise ValueError("policy min_interval needs min_interval_ms > 0")
        if self.policy == "period" and self.period_ms <= 0:
            raise ValueError("policy period needs period_ms > 0")
        return self

    @property
    def priority_level(self) -> Priority:
        return Priority[self.priority]


class CollectionConfig(_Model):
    """Which signals are kept and how; the first matching rule wins."""

    default: SignalPolicy = Field(default_factory=lambda: SignalPolicy(policy="all"))
    signals: list[SignalPolicy] = Field(default_factory=list, max_length=1000)
    labels: bool = Field(False, description="Send enum signals as their label string instead of the number.")


class BatchingConfig(_Model):
    """When a batch is closed. max_age_s also bounds what a power loss can lose (the in-memory window)."""

    max_samples: int = Field(20000, gt=0, le=10_000_000, description="A batch holds at most this many samples: it closes at this count, and a larger drain is cut there (the rest stays open).")
    max_age_s: float = Field(10.0, ge=0.05, le=3600,
                             description="Close a batch at this age (s); also the most a power loss can lose.")
    max_bytes: int = Field(
        IOTHUB_MAX_MESSAGE_BYTES - 4096, gt=1024, le=IOTHUB_MAX_MESSAGE_BYTES,
        description="Upper bound of an encoded batch (IoT Hub's message limit is 256 KB).",
    )


class EncodingConfig(_Model):
    """How a batch is written on the wire."""

    format: Literal["columnar", "json"] = Field("columnar", description="columnar (msgpack+zstd) or json.")
    timestamp_resolution: Literal["ms", "us"] = Field("ms", description="Timestamp resolution of columnar.")
    compression_level: int = Field(3, ge=1, le=19, description="zstd level for columnar.")


DEFAULT_TTL_S: dict[PriorityName, float] = {"low": 86400.0, "normal": 7 * 86400.0, "high": 30 * 86400.0}


class StoreConfig(_Model):
    """The durable store-and-forward queue (SQLite, WAL)."""

    path: str = Field("store.db", description="SQLite file; relative paths are under state_dir.")
    max_bytes: int = Field(256 * 1024 * 1024, gt=0, le=MAX_STORE_BYTES,
                           description="Byte limit of stored batches; at least 4 x batching.max_bytes.")
    max_batches: int | None = Field(None, ge=MIN_STORE_BATCHES, le=100_000_000,
                                    description="Optional batch-count limit (at least 4).")
    synchronous: Literal["NORMAL", "FULL"] = Field("NORMAL", description="SQLite synchronous setting.")
    spill_max_bytes: int = Field(
        16 * 1024 * 1024, gt=0, le=1024**3,
        description="Memory spill while the store cannot be written (disk full, read-only, corrupt): batches "
        "beyond this many bytes are dropped oldest first and counted as lost.",
    )
    ttl_s: dict[PriorityName, Annotated[float, Field(ge=MIN_TTL_S, le=MAX_TTL_S)]] = Field(
        default_factory=lambda: dict(DEFAULT_TTL_S),
        description="Time-to-live of a stored batch per priority, seconds (1 minute to 10 years).",
    )
    wal_max_bytes: int = Field(
        4 * 1024 * 1024, ge=64 * 1024, le=1024**3,
        description="Largest SQLite write-ahead log before it is checkpointed and truncated (never more than a "
        "quarter of the free space); smaller means more checkpoints, i.e. more flash writes.")
    quarantine_max_bytes: int = Field(
        8 * 1024 * 1024, gt=0,
        description="Bytes kept of quarantined batches (damaged on disk, or a sink cannot prepare them); "
        "beyond it the oldest are discarded (every quarantined batch stays counted).")

    @property
    def ttl_by_priority(self) -> dict[Priority, float]:
        """`ttl_s` as the store reads it: by Priority (the config spells the names)."""
        return {Priority[name]: ttl for name, ttl in self.ttl_s.items()}

class IoTHubConfig(_Model):
    """Azure IoT Hub (azure-iot-device). Only the *names* of env vars / files holding secrets live here."""

    identity: Literal["device_connection_string", "module_connection_string", "edge", "x509"] = Field(
        "device_connection_string",
        description="device_connection_string | module_connection_string (from env/file), "
        "edge (IoT Edge module environment), x509 (device certificate).")
    connection_string_env: str = Field(
        "VEHICLE_AGENT_IOTHUB_CONNECTION_STRING", description="Env var holding the connection string.")
    connection_string_file_env: str = Field(
        "VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE",
        description="Env var naming a file that holds the connection string (read if the other is unset).")
    connection_string_file: str | None = Field(None, description="File holding the connection string.")
    hostname: str | None = Field(None, description="x509: IoT Hub host name, e.g. myhub.azure-devices.net.")
    device_id: str | None = Field(None, description="x509: device id.")
    x509_cert_file: str | None = Field(None, description="x509: PEM certificate file.")
    x509_key_file: str | None = Field(None, description="x509: PEM private key file.")
    x509_pass_phrase_env: str | None = Field(None, description="x509: env var holding the key pass phrase.")
    gateway_hostname: str | None = Field(None, description="x509: gateway (edgeHub) to dial instead of the hub.")
    server_verification_cert: str | None = Field(
        None, description="PEM CA file to trust for the server (gateways, tests).")
    output_name: str = Field("telemetry", description="edge/module identity: output name edgeHub routes pick up.")
    reported_interval_s: float = Field(30.0, ge=0, description="At most one reported-properties update per interval.")
    connect_timeout_s: float = Field(30.0, gt=0, description="Timeout of connect().")
    send_timeout_s: float = Field(60.0, gt=0, description="Timeout of one send_message().")
    twin_timeout_s: float = Field(20.0, gt=0, description="Timeout of get_twin() and reported patches.")
    credential_retry_s: float = Field(300.0, gt=0, description="Retry interval after a credential error.")
    keep_alive_s: int = Field(60, ge=5, description="MQTT keep-alive (a dead link shows after 2x this).")


class MqttConfig(_Model):
    """Any MQTT 3.1.1 broker (asyncio-mqtt). Only the *names* of env vars / files holding secrets live here."""

    host: str = Field("127.0.0.1", description="Broker host name.")
    port: int | None = Field(None, ge=1, le=65535, description="Broker port (default 1883, or 8883 with TLS).")
    tls: bool = Field(False, description="Use TLS (also implied by ca_file or cert_file).")
    ca_file: str | None = Field(None, description="PEM CA file to verify the broker (default: the system's).")
    cert_file: str | None = Field(None, description="PEM client certificate (mutual TLS).")
    key_file: str | None = Field(None, description="PEM client private key (mutual TLS).")
    username: str | None = Field(None, description="User name (not a secret).")
    password_env: str = Field("VEHICLE_AGENT_MQTT_PASSWORD", description="Env var holding the password.")
    password_file_env: str = Field(
        "VEHICLE_AGENT_MQTT_PASSWORD_FILE", description="Env var naming a file that holds the password.")
    password_file: str | None = Field(None, description="File holding the password.")
    client_id: str | None = Field(None, description="MQTT client id (default: the vehicle id).")
    keepalive_s: int = Field(60, ge=5, description="MQTT keep-alive; a dead link shows after 1.5x this.")
    topic_prefix: str = Field("vehicles", description="Topics are <topic_prefix>/<vehicle_id>/...")
    connect_timeout_s: float = Field(10.0, gt=0, description="Timeout of one connection attempt.")
    publish_timeout_s: float = Field(30.0, gt=0, description="Timeout of one publish waiting for its PUBACK.")
    reported_interval_s: float = Field(30.0, ge=0, description="At most one reported-state update per interval.")
    credential_retry_s: float = Field(60.0, gt=0, description="Reconnect interval after the broker refused the credentials.")


class SinkFaultConfig(_Model):
    """Testing/diagnostic only: make the file sink slow or unreliable to exercise retries and crash safety."""

    fail_rate: float = Field(0.0, ge=0, le=1, description="Probability that a send fails (no acknowledgement).")
    ack_delay_ms: int = Field(0, ge=0, description="Delay before each send is acknowledged (a slow uplink).")
    seed: int | None = Field(None, description="Random seed for fail_rate (None: unpredictable).")
    crash_first: int = Field(
        0, ge=0, description="The first this many sends raise an unexpected error (as a bug in a sink would), "
        "to rehearse the supervisor's restarts.")
    delivery_log: str | None = Field(
        None, description="Append one JSON line per acknowledged send (id, samples, content hash) to this file; "
        "relative paths are under state_dir. Resends append again, so duplicates are visible.")


class _SinkSettings(_Model):
    """What every sink has: the forwarder's retry of a failed send."""

    retry_initial_s: float = Field(1.0, gt=0, description="First retry delay of a failed send (s); doubles per "
                                   "failure, jittered.")
    retry_max_s: float = Field(60.0, gt=0, description="Longest retry delay of a failed send (s).")

    def longest_call_s(self) -> float:
        """The longest single call the sink may make (connect, send); the forwarder cannot beat inside it."""
        return 5.0


class FileSinkConfig(_SinkSettings):
    """sink.type file: an outbox folder of atomically written batch files."""

    type: Literal["file"] = Field("file", description="file (local outbox).")
    path: str = Field("outbox", description="Outbox folder; relative paths are under state_dir.")
    decoded: bool = Field(True, description="Write one JSON line per sample instead of the raw batch.")
    max_bytes: int = Field(
        256 * 1024 * 1024, gt=0,
        description="Bound of the outbox folder; beyond it the oldest batches' files are removed "
        "(counted in status as removed_batches).")
    fault: SinkFaultConfig | None = Field(
        None, description="Testing/diagnostic only: injected failures and slow acknowledgements.")


class IoTHubSinkConfig(_SinkSettings):
    """sink.type iothub: Azure IoT Hub, settings in sink.iothub."""

    type: Literal["iothub"] = Field(description="iothub (Azure IoT Hub).")
    iothub: IoTHubConfig = Field(default_factory=IoTHubConfig, description="iothub sink settings.")

    def longest_call_s(self) -> float:
        return max(self.iothub.connect_timeout_s, self.iothub.send_timeout_s)


class MqttSinkConfig(_SinkSettings):
    """sink.type mqtt: any MQTT 3.1.1 broker, settings in sink.mqtt."""

    type: Literal["mqtt"] = Field(description="mqtt (any MQTT broker).")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="mqtt sink settings.")

    def longest_call_s(self) -> float:
        return max(self.mqtt.connect_timeout_s, self.mqtt.publish_timeout_s)


SINK_MODELS: dict[str, type[_SinkSettings]] = {"file": FileSinkConfig, "iothub": IoTHubSinkConfig,
                                               "mqtt": MqttSinkConfig}


def sink_type(value: Any) -> str:
    """The sink a `sink` section is for (its `type`, `file` when it has none): the union's tag."""
    found = value.get("type", "file") if isinstance(value, Mapping) else getattr(value, "type", "file")
    return found if isinstance(found, str) else repr(found)


# Where batches go: one model per sink, chosen by `type`; a key of another sink is an error naming it.
SinkConfig = Annotated[
    Annotated[FileSinkConfig, Tag("file")] | Annotated[IoTHubSinkConfig, Tag("iothub")]
    | Annotated[MqttSinkConfig, Tag("mqtt")],
    Discriminator(sink_type, custom_error_type="sink_type",
                  custom_error_message="unknown sink type (file, iothub or mqtt)"),
]


class RemoteDatabasesConfig(_Model):
    """How the agent fetches and watches databases the cloud sends (desired `databases`,
    docs/remote-databases.md). Local only."""

    ca_file: str | None = Field(None, description="Extra CA certificate (PEM) that the file servers' TLS "
                                "chains to; default: the system's CAs. Proxies come from HTTPS_PROXY/NO_PROXY.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Connecting and each read of a download, seconds.")
    deadline_s: float = Field(600.0, gt=0, le=86400, description="One download attempt at most, seconds.")
    attempts: int = Field(5, ge=1, le=100, description="Attempts of a file in one round (capped backoff between).")
    retry_max_s: float = Field(900.0, gt=0, le=86400, description="A round that failed on the network is "
                               "tried again after a backoff up to this many seconds (the vehicle may be offline).")
    parse_timeout_s: float = Field(60.0, gt=0, le=3600, description="Parsing a new set at most, seconds "
                                   "(in a child process, so a hostile file cannot stall collection).")
    parse_memory_mb: int = Field(1024, ge=64, le=65536, description="Memory of that child process at most, MiB.")
    watch_frames: int = Field(1000, ge=10, le=10**9, description="After a swap, frames of a bus watched for an "
                              "unknown-id or decode-error jump before the version counts as known-good.")
    watch_max_s: float = Field(600.0, gt=0, le=7 * 86400, description="The watch ends after this long at most.")
    jump: float = Field(0.2, gt=0, le=1, description="Rollback when a bus's share of unknown ids or of decode "
                        "errors since the swap exceeds the share before it by this much (0.2 = 20 points).")


class AgentConfig(_Model):
    """The whole agent configuration (the YAML file, and the twin's desired properties)."""

    vehicle_id: str = Field("demo-car", description="This vehicle's id, in every batch.")
    state_dir: str = Field("state", description="Folder for the store, status file and outbox.")
    databases_dir: str | None = Field(
        None, description="The folder the cloud may name databases in (by name only); default: the config "
        "file's folder. Local only.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    summary_interval_s: float = Field(
        60.0, ge=0, le=86400, description="A `summary` log line this often (rates, kept, stored, sent, store "
        "depth, drops) for headless operation; 0: none.")
    buses: list[BusConfig] = Field(min_length=1, max_length=32)
    collection: CollectionConfig = Field(default_factory=CollectionConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    encoding: EncodingConfig = Field(default_factory=EncodingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    sink: SinkConfig = Field(default_factory=FileSinkConfig)
    campaigns: list[Campaign] = Field(default_factory=list, description=(
        "Condition-triggered (or periodic) captures with pre- and post-trigger windows, sent as event "
        "batches (docs/campaigns.md). Cloud-writable as a whole list."))
    campaign_buffer_max_bytes: int = Field(
        DEFAULT_BUDGET_BYTES, ge=64 * 1024, le=1024 * 1024 * 1024,
        description="Memory of all campaigns' pre-/post-trigger buffers together. Local only.")
    remote_databases: RemoteDatabasesConfig = Field(default_factory=RemoteDatabasesConfig)
    software_update: SoftwareUpdate | None = Field(None, description=(
        "An over-the-air software update to verify, install when the vehicle allows and confirm "
        "(docs/ota.md). Cloud-writable."))
    ota: OtaConfig = Field(default_factory=OtaConfig, description="Software update settings. Local only.")
    base_dir: Annotated[str, Field(exclude=True, description="Folder relative paths resolve against.")] = "."

    @field_validator("buses")
    @classmethod
    def _unique_bus_names(cls, buses: list[BusConfig]) -> list[BusConfig]:
        names = [b.name for b in buses]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"bus names must be unique, repeated: {', '.join(dupes)}")
        return buses

    @field_validator("campaigns")
    @classmethod
    def _campaign_ids(cls, campaigns: list[Campaign]) -> list[Campaign]:
        return check_campaigns(campaigns)

    @model_validator(mode="after")
    def _updates_enabled(self) -> AgentConfig:
        if self.software_update is not None and not self.ota.enabled:
            raise ValueError("software_update: software updates are disabled on this device (ota.enabled: false)")
        return self

    @model_validator(mode="after")
    def _store_holds_several_batches(self) -> AgentConfig:
        if self.store.max_bytes < MIN_STORE_BATCHES * self.batching.max_bytes:
            raise ValueError(f"store.max_bytes ({self.store.max_bytes}) must hold at least {MIN_STORE_BATCHES} "
                             f"batches of batching.max_bytes ({self.batching.max_bytes})")
        return self

    def databases_folder(self) -> Path:
        """The folder the cloud's database names are looked up in (databases_dir, else the config's folder)."""
        return self.resolve(self.databases_dir or ".")

    def resolve(self, path: str) -> Path:
        """A config path made absolute against the config file's folder."""
        p = Path(os.path.expanduser(path))
        return Path(os.path.normpath(p if p.is_absolute() else Path(self.base_dir) / p))  # no `config/../state`

    def state_path(self, path: str) -> Path:
        """A path made absolute against the state directory."""
        p = Path(os.path.expanduser(path))
        return Path(os.path.normpath(p if p.is_absolute() else self.resolve(self.state_dir) / p))



def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config (also the twin's desired-properties contract)."""
    schema = AgentConfig.model_json_schema()
    schema["properties"].pop("base_dir", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vehicle-agent configuration"
    return schema
