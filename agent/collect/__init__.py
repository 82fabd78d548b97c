"""Collection: which decoded values become samples (sampling policies per signal)."""

from agent.collect.collector import Collector
from agent.collect.policy import make_filter, resolve_policy

__all__ = ["Collector", "make_filter", "resolve_policy"]
