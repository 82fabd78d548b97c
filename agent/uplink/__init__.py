"""Sinks: where stored batches go. One small interface, one implementation per destination."""

from agent.uplink.base import Sink, SinkError

__all__ = ["Sink", "SinkError"]
