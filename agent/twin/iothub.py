"""The device twin and direct methods over the azure-iot-device client.

The SDK calls handlers on its own thread, so every handler only hands work to the agent's loop;
all state changes then happen there, between frames. After every (re)connect the full twin is
fetched and reconciled here, because the SDK's own desired-properties sync after connect can be
lost (see docs/iothub.md). Every SDK call has a timeout: some (get_twin) hang forever otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from azure.iot.device import MethodResponse

from agent.twin.methods import dispatch_method
from agent.twin.reporter import Reporter
from agent.uplink.base import Control

log = structlog.get_logger()


class TwinLink:
    """Desired state in, acks and reported state out, direct methods answered."""

    def __init__(self, client: Any, control: Control, loop: asyncio.AbstractEventLoop, *,
                 timeout_s: float, reported_interval_s: float) -> None:
        self.client = client
        self.control = control
        self.loop = loop
        self.timeout_s = timeout_s
        self.reporter = Reporter(control.status, self.patch_reported, interval_s=reported_interval_s)
        self.desired_version: int | None = None
        self.methods_answered = 0
        self._tasks: set[asyncio.Future] = set()

    # ------------------------------------------------------------- SDK thread -> agent loop
    def install(self) -> None:
        """Register the handlers (the SDK's own thread calls them)."""
        self.client.on_twin_desired_properties_patch_received = self._on_patch
        self.client.on_method_request_received = self._on_method

    def _submit(self, coro: Any) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def _on_patch(self, patch: dict[str, Any]) -> None:
        self._submit(self.apply_desired(patch, full=False))

    def _on_method(self, request: Any) -> None:
        self._submit(self.answer_method(request))

    # ------------------------------------------------------------- twin
    async def patch_reported(self, patch: dict[str, Any]) -> None:
        await asyncio.wait_for(self.client.patch_twin_reported_properties(patch), self.timeout_s)

    async def apply_desired(self, doc: dict[str, Any], *, full: bool) -> None:
        acks = self.control.handle_desired(doc, full=full)
        if isinstance(doc.get("$version"), int):
            self.desired_version = doc["$version"]
        if acks:
            try:
                await self.patch_reported(acks)
            except Exception as exc:  # noqa: BLE001 - the next reconnect's reconcile re-acks
                log.warning("desired_ack_failed", version=doc.get("$version"), error=str(exc) or type(exc).__name__)

    async def reconcile(self) -> None:
        """After a (re)connect: fetch the whole twin and apply its desired section."""
        twin = await asyncio.wait_for(self.client.get_twin(), self.timeout_s)
        desired = twin.get("desired", {}) if isinstance(twin, dict) else {}
        log.info("twin_fetched", desired_version=desired.get("$version"))
        await self.apply_desired(desired, full=True)
        self.reporter.reset()

    # ------------------------------------------------------------- methods
    async def answer_method(self, request: Any) -> None:
        status, payload = self.dispatch(request.name, request.payload)
        log.info("method_called", method=request.name, status=status)
        try:
            await asyncio.wait_for(self.client.send_method_response(
                MethodResponse.create_from_method_request(request, status, payload)), self.timeout_s)
            self.methods_answered += 1
        except Exception as exc:  # noqa: BLE001 - the caller times out; nothing else to do
            log.warning("method_response_failed", method=request.name, error=str(exc) or type(exc).__name__)

    def dispatch(self, name: str, payload: Any) -> tuple[int, Any]:
        return dispatch_method(self.control, name, payload)
