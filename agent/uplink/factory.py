"""The sink named by the config (`sink.type`)."""

from __future__ import annotations

from agent.config import AgentConfig
from agent.uplink.base import Sink
from agent.uplink.file import FileSink


def make_sink(cfg: AgentConfig) -> Sink:
    if cfg.sink.type == "file":
        return FileSink(cfg.state_path(cfg.sink.path), decoded=cfg.sink.decoded)
    if cfg.sink.type == "iothub":
        from agent.uplink.iothub import IoTHubSink  # the SDK is imported only when used

        return IoTHubSink(cfg.sink.iothub, base_dir=cfg.resolve("."))
    raise ValueError(f"sink.type {cfg.sink.type!r} is not available")
