"""The sink named by the config (`sink.type`)."""

from __future__ import annotations

from agent.config import AgentConfig, FileSinkConfig, IoTHubSinkConfig, MqttSinkConfig
from agent.uplink.base import Sink
from agent.uplink.fault import FaultySink
from agent.uplink.file import FileSink


def make_sink(cfg: AgentConfig) -> Sink:
    settings = cfg.sink
    if isinstance(settings, FileSinkConfig):
        fault = settings.fault
        sink = FileSink(cfg.state_path(settings.path), decoded=settings.decoded, max_bytes=settings.max_bytes)
        if fault is None:
            return sink
        return FaultySink(sink, fail_rate=fault.fail_rate, ack_delay_ms=fault.ack_delay_ms, seed=fault.seed,
                          crash_first=fault.crash_first,
                          delivery_log=cfg.state_path(fault.delivery_log) if fault.delivery_log else None)
    if isinstance(settings, IoTHubSinkConfig):
        from agent.uplink.iothub import IoTHubSink  # the SDK is imported only when used

        return IoTHubSink(settings.iothub, base_dir=cfg.resolve("."))
    if isinstance(settings, MqttSinkConfig):
        from agent.uplink.mqtt import MqttSink  # asyncio-mqtt is imported only when used

        return MqttSink(settings.mqtt, vehicle=cfg.vehicle_id, base_dir=cfg.resolve("."))
    raise ValueError(f"sink.type {settings.type!r} is not available")
