"""The agent's configuration: one immutable, validated object (issue 18: schema, loading, diff, cloud).

    schema.py   the models (AgentConfig, a bus, the policies, the store, one model per sink)
    loading.py  the YAML file and the environment over it, validated; errors as `path: reason` lines
    diff.py     what differs between two configs, and `deep_merge`, the one merge
    cloud.py    what the cloud may write, and the checks of a bus entry it sends
    environment.py  the VEHICLE_AGENT_* variables the agent reads; any other is refused by name

Everything is importable from `agent.config` as before the split.
"""

from agent.config.cloud import (
    CLOUD_BUS_KEYS,
    CLOUD_INTERFACES,
    CLOUD_STORE_KEYS,
    CLOUD_WRITABLE,
    DATABASE_SUFFIXES,
    LOCAL_BUS_KEYS,
    MAX_DATABASE_BYTES,
    cloud_bus_errors,
    confine_database,
    database_name_problem,
    localize_cloud_bus,
)
from agent.config.diff import RESTART_ONLY, buses_to_restart, deep_merge, restart_only_changes
from agent.config.loading import (
    DEFAULT_CONFIG,
    ENV_PREFIX,
    ConfigError,
    build_config,
    config_path,
    env_sources,
    error_source,
    load_config,
    load_config_data,
    read_yaml,
    validation_errors,
)
from agent.config.schema import (
    DEFAULT_TTL_S,
    IOTHUB_MAX_MESSAGE_BYTES,
    MAX_BITRATE,
    MAX_INTERVAL_MS,
    MAX_STORE_BYTES,
    MAX_TTL_S,
    MIN_STORE_BATCHES,
    MIN_TTL_S,
    SINK_MODELS,
    AgentConfig,
    BatchingConfig,
    BusConfig,
    CollectionConfig,
    EncodingConfig,
    FileSinkConfig,
    IoTHubConfig,
    IoTHubSinkConfig,
    MqttConfig,
    MqttSinkConfig,
    PolicyKind,
    PriorityName,
    RemoteDatabasesConfig,
    SignalPolicy,
    SinkConfig,
    SinkFaultConfig,
    StoreConfig,
    json_schema,
    sink_type,
)

__all__ = [
    "CLOUD_BUS_KEYS", "CLOUD_INTERFACES", "CLOUD_STORE_KEYS", "CLOUD_WRITABLE", "DATABASE_SUFFIXES",
    "DEFAULT_CONFIG", "DEFAULT_TTL_S", "ENV_PREFIX", "IOTHUB_MAX_MESSAGE_BYTES", "LOCAL_BUS_KEYS", "MAX_BITRATE",
    "MAX_DATABASE_BYTES", "MAX_INTERVAL_MS", "MAX_STORE_BYTES", "MAX_TTL_S", "MIN_STORE_BATCHES", "MIN_TTL_S",
    "RESTART_ONLY", "SINK_MODELS", "AgentConfig", "BatchingConfig", "BusConfig", "CollectionConfig", "ConfigError",
    "EncodingConfig", "FileSinkConfig", "IoTHubConfig", "IoTHubSinkConfig", "MqttConfig", "MqttSinkConfig",
    "PolicyKind", "PriorityName", "RemoteDatabasesConfig", "SignalPolicy", "SinkConfig", "SinkFaultConfig", "StoreConfig", "build_config",
    "buses_to_restart", "cloud_bus_errors", "config_path", "confine_database", "database_name_problem", "deep_merge", "env_sources",
    "error_source", "json_schema", "load_config", "load_config_data", "localize_cloud_bus", "read_yaml",
    "restart_only_changes", "sink_type", "validation_errors",
]
