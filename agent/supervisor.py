"""The supervisor: every long-running task of the agent runs under it, none dies silently.

A task that raises is logged once with its traceback, counted (`tasks.<name>` in status: restarts,
last error) and restarted after a capped exponential backoff. Each task beats (`beat()`) while it
makes progress; a task whose last beat is older than its `stall_s` is wedged, and the agent then
stops feeding the systemd watchdog so the service manager restarts it. A hung event loop needs no
beat to be caught: nothing would feed the watchdog at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.liveness import backoff_delay, current, pause

log = structlog.get_logger()

RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_RUN_S = 60.0  # a task that ran this long before failing starts its backoff afresh

@dataclass(slots=True)
class Worker:
    """One supervised task: what `tasks.<name>` in status shows."""

    name: str
    factory: Callable[[], Awaitable[None]]
    stop: asyncio.Event
    stall_s: float
    restart: bool = True
    state: str = "running"            # running | restarting | done | failed | stopped
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_beat: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None

    def stalled_for(self, now: float) -> float | None:
        """Seconds since the last beat if the task is running and past its stall limit, else None."""
        idle = now - self.last_beat
        return idle if self.state == "running" and idle > self.stall_s else None

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "last_error_at": self.last_error_at,
                "since_progress_s": round(time.monotonic() - self.last_beat, 1), "stall_s": self.stall_s}


class Supervisor:
    """Runs, restarts and watches the agent's tasks."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.workers: dict[str, Worker] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, stall_s: float = 30.0,
              stop: asyncio.Event | None = None, restart: bool = True) -> asyncio.Task:
        """Run `factory()` as task `name` until it returns, restarting it whenever it raises (unless
        `restart` is False: then it ends as `failed`); `stop` (default the agent's) ends a restart
        backoff early. A name spawned again replaces its entry."""
        worker = Worker(name, factory, stop or self.stop, stall_s, restart)
        self.workers[name] = worker
        worker.task = asyncio.create_task(self._run(worker), name=name)
        return worker.task

    def forget(self, name: str) -> None:
        """Drop a task that is being stopped for good (a bus removed by a config swap)."""
        self.workers.pop(name, None)

    async def _run(self, worker: Worker) -> None:
        current.set(worker)  # this task's own context: beat() in the coroutine finds its worker
        failures = 0
        while True:
            worker.state, worker.last_beat = "running", time.monotonic()
            started = worker.last_beat
            try:
                await worker.factory()
                worker.state = "done"
                return
            except asyncio.CancelledError:
                worker.state = "stopped"
                raise
            except Exception as exc:  # noqa: BLE001 - the point: no task dies silently
                failures = 1 if time.monotonic() - started > HEALTHY_RUN_S else failures + 1
                worker.restarts += 1
                worker.last_error, worker.last_error_at = f"{type(exc).__name__}: {exc}", time.time()
                delay = backoff_delay(failures, RESTART_INITIAL_S, RESTART_MAX_S)
                log.error("task_crashed", task=worker.name, error=worker.last_error, restarts=worker.restarts,
                          restart_in_s=round(delay, 2), exc_info=exc)
            if not worker.restart:
                worker.state = "failed"
                return
            if worker.stop.is_set() or self.stop.is_set():
                worker.state = "stopped"
                return
            worker.state = "restarting"
            await pause(worker.stop, delay)
            if worker.stop.is_set():
                worker.state = "stopped"
                return

    def stalled(self) -> dict[str, float]:
        """Running tasks past their stall limit, with seconds since their last beat."""
        now = time.monotonic()
        return {w.name: round(idle, 1) for w in self.workers.values() if (idle := w.stalled_for(now)) is not None}

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: w.as_dict() for name, w in self.workers.items()}
