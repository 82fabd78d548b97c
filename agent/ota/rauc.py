"""The `rauc` backend: RAUC's D-Bus API (`de.pengutronix.rauc.Installer` on `/`).

Install: subscribe to `Completed` and the `Progress` property first, then `InstallBundle(path, {})`;
`Completed(0)` is success, otherwise `LastError` says why. After the reboot, `BootSlot` tells whether
the new slot runs, and `Mark("good", "booted")` stops the bootloader's fallback once the agent is
healthy (left undone, the bootloader falls back to the old slot by itself).

D-Bus library: dbus-fast (asyncio, maintained, typed; its low-level `Message` calls need no
introspection), so the installer's progress arrives on the agent's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from agent.ota.backend import Backend, InstallError, Resumed

log = structlog.get_logger()

SERVICE = "de.pengutronix.rauc"
INSTALLER = "de.pengutronix.rauc.Installer"
PROPERTIES = "org.freedesktop.DBus.Properties"
CALL_TIMEOUT_S = 30.0


class RaucBackend(Backend):
    name = "rauc"

    def __init__(self, bus_address: str | None) -> None:
        self.bus_address = bus_address
        self.bus: MessageBus | None = None

    async def _bus(self) -> MessageBus:
        if self.bus is None or not self.bus.connected:
            try:
                bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM)
                self.bus = await asyncio.wait_for(bus.connect(), CALL_TIMEOUT_S)
            except (OSError, TimeoutError, Exception) as exc:  # dbus-fast raises its own AuthError etc.
                self.bus = None
                raise InstallError(f"RAUC's D-Bus is not reachable: {type(exc).__name__}: {exc}") from None
            await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch",
                             "s", [f"type='signal',sender='{SERVICE}',path='/'"])
        return self.bus

    async def _call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None) -> list[Any]:
        assert self.bus is not None
        try:
            reply = await asyncio.wait_for(self.bus.call(Message(
                destination=destination, path=path, interface=interface, member=member, signature=signature,
                body=body or [])), CALL_TIMEOUT_S)
        except (OSError, TimeoutError, EOFError) as exc:
            raise InstallError(f"RAUC: {member}: {type(exc).__name__}") from None
        if reply is None:
            raise InstallError(f"RAUC: {member}: no reply")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else reply.error_name
            raise InstallError(f"RAUC: {member}: {text}")
        return list(reply.body)

    async def _installer(self, member: str, signature: str = "", body: list[Any] | None = None) -> list[Any]:
        await self._bus()
        return await self._call(SERVICE, "/", INSTALLER, member, signature, body)

    async def _property(self, name: str) -> Any:
        await self._bus()
        value = (await self._call(SERVICE, "/", PROPERTIES, "Get", "ss", [INSTALLER, name]))[0]
        return value.value

    def _follow(self, progress: Callable[[int, int], None]) -> tuple[asyncio.Future[int], Callable[[Message], None]]:
        """A future of the next `Completed` result, and the handler feeding it and the progress."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def handler(msg: Message) -> None:
            if msg.message_type != MessageType.SIGNAL or msg.path != "/":
                return
            if msg.interface == INSTALLER and msg.member == "Completed" and not done.done():
                done.set_result(int(msg.body[0]))
            elif msg.interface == PROPERTIES and msg.member == "PropertiesChanged" and msg.body[0] == INSTALLER:
                prog = msg.body[1].get("Progress")
                if prog is not None:
                    with contextlib.suppress(TypeError, ValueError, IndexError):
                        progress(int(prog.value[0]), 100)
        return done, handler

    async def _wait_completed(self, progress: Callable[[int, int], None], start: Callable[[], Any]) -> None:
        bus = await self._bus()
        done, handler = self._follow(progress)
        bus.add_message_handler(handler)
        try:
            if await start():
                result = await done
                if result != 0:
                    why = await self._property("LastError")
                    raise InstallError(f"RAUC: {why or f'installation failed ({result})'}")
        finally:
            bus.remove_message_handler(handler)

    async def install(self, image: Path, version: str, note: Callable[..., None],
                      progress: Callable[[int, int], None]) -> None:
        async def start() -> bool:
            await self._installer("InstallBundle", "sa{sv}", [str(image.resolve()), {}])
            return True
        await self._wait_completed(progress, start)

    async def resume(self, installer: dict[str, Any], version: str) -> Resumed:
        """Still installing: wait for `Completed`. Else the bundle's version in a slot says it went in."""
        async def start() -> bool:
            return bool(await self._property("Operation") == "installing")
        await self._wait_completed(lambda done, total: None, start)
        return "installed" if await self._slot_with(version) is not None else "again"

    async def _slot_with(self, version: str) -> str | None:
        """The bootname of the slot (not the booted one) holding a bundle of `version`."""
        slots = (await self._installer("GetSlotStatus"))[0]
        for _name, info in slots:
            values = {k: v.value for k, v in info.items()}
            if values.get("bundle.version") == version and values.get("state") != "booted":
                return str(values.get("bootname")) if values.get("bootname") else None
        return None

    async def target_slot(self) -> str | None:
        version = None
        with contextlib.suppress(InstallError):
            slots = (await self._installer("GetSlotStatus"))[0]
            newest = max(slots, key=lambda s: str(s[1].get("installed.timestamp").value)
                         if s[1].get("installed.timestamp") is not None else "", default=None)
            if newest is not None and newest[1].get("bootname") is not None:
                version = str(newest[1]["bootname"].value)
        return version

    async def booted(self) -> str | None:
        return str(await self._property("BootSlot")) or None

    async def mark_good(self) -> None:
        slot, message = await self._installer("Mark", "ss", ["good", "booted"])
        log.info("ota_rauc_marked_good", slot=slot, message=message)

    async def close(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None
