"""What the control plane may ask of the running agent: the facade behind direct methods and the reporter.

The plane owns one `Commands` (the runtime builds it and hands it to make_plane); the runtime
(agent.app) only runs, swaps and shuts down, and is reached here through the few parts named in
`Running`. Desired properties (config, databases, software updates) do not come this way: they go
through `DesiredState`, which applies them with the runtime's swap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent.logs import set_level

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.pipeline import Pipeline
    from agent.status.document import StatusDocument
    from agent.uplink.forwarder import Forwarder

log = structlog.get_logger()


class Running(Protocol):
    """The parts of a running agent the commands act on (agent.app.Agent)."""

    cfg: AgentConfig
    pipeline: Pipeline
    forwarder: Forwarder


class Commands:
    """Implements `Control` (agent.twin.control) over a running agent and its status."""

    def __init__(self, running: Running, status: Callable[[], StatusDocument]) -> None:
        self.running = running
        self._status = status

    def status(self) -> StatusDocument:
        return self._status()

    def flush_now(self) -> None:
        self.running.pipeline.flush()
        self.running.forwarder.notify()

    def campaigns(self) -> dict[str, Any]:
        """The campaigns this agent runs, with their state (method `list_campaigns`)."""
        engine = self.running.pipeline.campaigns
        state = engine.status()["campaigns"] if engine is not None else {}
        return {"campaigns": [{**c.model_dump(mode="json", exclude_none=True), **state.get(c.id, {})}
                              for c in self.running.cfg.campaigns]}

    def trigger_campaign(self, campaign_id: str) -> str:
        """Fire a campaign's trigger by hand (method `trigger_campaign`); returns the event id.
        KeyError: no such campaign; ValueError: it is waiting or expired."""
        engine = self.running.pipeline.campaigns
        if engine is None:
            raise KeyError(campaign_id)
        return engine.trigger(campaign_id)

    def set_log_level(self, level: str, duration_s: float | None = None) -> None:
        log.warning("log_level_set", requested_level=level, duration_s=duration_s)  # `level` is the record's own
        set_level(level)
        if duration_s:
            asyncio.get_running_loop().call_later(duration_s, set_level, self.running.cfg.log_level)
