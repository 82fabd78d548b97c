"""The `swupdate` backend: SWUpdate's IPC sockets (`sockinstctrl`, `swupdateprog` in its $TMPDIR).

Install: connect to the progress socket first, then to the control socket; send REQ_INSTALL (an
`ipc_message`, source LOCAL), read ACK or NACK (NACK: an update is running), stream the image on the
same connection and close it; progress records follow until SUCCESS or FAILURE. The reason of a
failure comes from a NOTIFY_STREAM connection (its error-level messages since START).

Layouts are SWUpdate 2022.12's on a 64-bit little-endian machine (network_ipc.h, progress_ipc.h in
libswupdate): `ipc_message` 3120 bytes, `progress_msg` 2416 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.ota.backend import Backend, InstallError, Resumed

log = structlog.get_logger()

IPC_MAGIC = 0x14052001
REQ_INSTALL, ACK, NACK, NOTIFY_STREAM = 0, 1, 2, 11
SOURCE_LOCAL = 4
API_VERSION = 1
# magic, type, instmsg { req { apiversion, source, dry_run, len, info, software_set, running_mode,
# disable_store_swu }, len, buf }
IPC = struct.Struct("<iiIiixxxxQ512s256s256s?7xI2048s4x")
IPC_HEAD = struct.Struct("<ii")
NOTIFY = struct.Struct("<iiiii2048s")   # magic, type, notify { status, error, level, msg }
# apiversion, status, dwl_percent, dwl_bytes, nsteps, cur_step, cur_percent, cur_image, hnd_name, source,
# infolen, info
PROGRESS = struct.Struct("<IIIxxxxQIII256s64sII2048s4x")
START, RUN, SUCCESS, FAILURE = 1, 2, 3, 4
ERROR_LEVEL = 1
CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 3600.0

assert IPC.size == 3120 and PROGRESS.size == 2416


def request(msgtype: int) -> bytes:
    return IPC.pack(IPC_MAGIC, msgtype, API_VERSION, SOURCE_LOCAL, 0, 0, b"", b"", b"", False, 0, b"")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class SwupdateBackend(Backend):
    name = "swupdate"

    def __init__(self, socket_dir: Path) -> None:
        self.ctrl = socket_dir / "sockinstctrl"
        self.prog = socket_dir / "swupdateprog"

    async def _open(self, path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(str(path)), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise InstallError(f"SWUpdate is not reachable at {path}: {type(exc).__name__}") from None

    async def _notifications(self, errors: list[str]) -> None:
        """Collect error-level notifications (the connection replays old ones: START clears them)."""
        reader, writer = await self._open(self.ctrl)
        try:
            writer.write(request(NOTIFY_STREAM))
            await writer.drain()
            await reader.readexactly(IPC.size)  # the ACK
            while True:
                raw = await reader.readexactly(IPC.size)
                _magic, _type, status, _error, level, msg = NOTIFY.unpack_from(raw)
                if status == START:
                    errors.clear()
                if level == ERROR_LEVEL and len(errors) < 16:
                    errors.append(_text(msg)[:200])
        finally:
            writer.close()

    async def install(self, image: Path, version: str, note: Callable[..., None],
                      progress: Callable[[int, int], None]) -> None:
        errors: list[str] = []
        notify = asyncio.create_task(self._notifications(errors))
        prog_reader, prog_writer = await self._open(self.prog)
        try:
            await asyncio.sleep(0.05)  # the notification stream is registered before the install starts
            await self._stream(image, note)
            result = await asyncio.wait_for(self._follow(prog_reader, progress), INSTALL_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            raise InstallError("SWUpdate closed its progress socket before the result") from None
        except TimeoutError:
            raise InstallError(f"SWUpdate gave no result within {INSTALL_TIMEOUT_S:g} s") from None
        finally:
            prog_writer.close()
            await asyncio.sleep(0.05)  # the last notifications
            notify.cancel()
            with contextlib.suppress(asyncio.CancelledError, InstallError, OSError, asyncio.IncompleteReadError):
                await notify
        if result != SUCCESS:
            why = next((e for e in errors if e), "") or "installation failed"
            raise InstallError(f"SWUpdate: {why}")

    async def _stream(self, image: Path, note: Callable[..., None]) -> None:
        reader, writer = await self._open(self.ctrl)
        try:
            writer.write(request(REQ_INSTALL))
            await writer.drain()
            magic, answer = IPC_HEAD.unpack_from(await reader.readexactly(IPC.size))
            if magic != IPC_MAGIC or answer != ACK:
                raise InstallError("SWUpdate refused the install (NACK: another update is running)"
                                   if answer == NACK else f"SWUpdate answered {answer}")
            note(installer={"streaming": True})
            with image.open("rb") as f:
                while chunk := f.read(CHUNK):
                    writer.write(chunk)
                    await writer.drain()
            note(installer={"streamed": True})
        except (BrokenPipeError, ConnectionResetError):
            pass  # SWUpdate stops reading a stream it refused (signature): the progress socket says why
        except asyncio.IncompleteReadError:
            raise InstallError("SWUpdate closed the connection without an answer") from None
        finally:
            writer.close()

    @staticmethod
    async def _follow(reader: asyncio.StreamReader, progress: Callable[[int, int], None]) -> int:
        while True:
            fields = PROGRESS.unpack(await reader.readexactly(PROGRESS.size))
            status, nsteps, step, percent = fields[1], fields[4], fields[5], fields[6]
            if status in (SUCCESS, FAILURE):
                return int(status)
            if nsteps:
                progress(max(0, step - 1) * 100 + min(percent, 100), nsteps * 100)

    async def resume(self, installer: dict[str, Any], version: str) -> Resumed:
        """The stream came from this agent: an interrupted one was refused by SWUpdate as incomplete."""
        if installer.get("streamed"):
            raise InstallError("the agent stopped after handing the image to SWUpdate: result unknown "
                               "(the version after the next reboot tells)")
        return "again"
