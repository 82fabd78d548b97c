"""The sink named by the config (`sink.type`)."""

from __future__ import annotations

from agent.config import AgentConfig
from agent.uplink.base import Sink
from agent.uplink.fault import FaultySink
from agent.uplink.file import FileSink


def make_sink(cfg: AgentConfig) -> Sink:
    if cfg.sink.type == "file":
        fault = cfg.sink.fault
        sink = FileSink(cfg.state_path(cfg.sink.path), decoded=cfg.sink.decoded, max_bytes=cfg.sink.max_bytes)
        if fault is None:
            return sink
        return FaultySink(sink, fail_rate=fault.fail_rate, ack_delay_ms=fault.ack_delay_ms, seed=fault.seed,
                          crash_first=fault.crash_first,
                          delivery_log=cfg.state_path(fault.delivery_log) if fault.delivery_log else None)
    if cfg.sink.type == "iothub":
        from agent.uplink.iothub import IoTHubSink  # the SDK is imported only when used

        return IoTHubSink(cfg.sink.iothub, base_dir=cfg.resolve("."))
    if cfg.sink.type == "mqtt":
        from agent.uplink.mqtt import MqttSink  # asyncio-mqtt is imported only when used

        return MqttSink(cfg.sink.mqtt, vehicle=cfg.vehicle_id, base_dir=cfg.resolve("."))
    raise ValueError(f"sink.type {cfg.sink.type!r} is not available")
