"""The `command` backend: a configured installer run with the verified image; its exit code is the result.

The installer outlives the agent: it runs in its own session under a small shell wrapper that
writes its exit code to a result file, and its output goes to a log file (not a pipe, which would
break when the agent dies). An agent that restarts mid-install finds the installer still running
(same pid and start time) and waits for the result file, or reads the result it left.

The wrapper writes its own pid and the boot id to a pid file before it runs the installer: an agent
killed between starting the wrapper and saving its pid in the state file (a loaded unit can take
that long) still finds the installer on restart instead of starting it a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.ota.backend import Backend, InstallError, Resumed

log = structlog.get_logger()

# runs the installer, then writes its exit code atomically where the agent looks for it
WRAPPER = ('printf "%s %s" "$$" "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" > "$VA_OTA_PID.tmp"'
           ' && mv -f "$VA_OTA_PID.tmp" "$VA_OTA_PID"; '
           'rc=0; "$@" || rc=$?; printf "%s" "$rc" > "$VA_OTA_RESULT.tmp" && mv -f "$VA_OTA_RESULT.tmp" "$VA_OTA_RESULT"')
POLL_S = 0.2
TAIL_BYTES = 400


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _tail(path: Path) -> str:
    """The installer's last output line (for the error), bounded."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-200:] if lines else ""


class CommandBackend(Backend):
    name = "command"

    def __init__(self, argv: list[str], folder: Path, timeout_s: float) -> None:
        self.argv, self.folder, self.timeout_s = argv, folder, timeout_s
        self.result = folder / "installer.rc"
        self.output = folder / "installer.log"
        self.pid_file = folder / "installer.pid"

    async def install(self, image: Path, version: str, note: Callable[..., None],
                      progress: Callable[[int, int], None]) -> None:
        if not self.argv:
            raise InstallError("ota.command.argv is empty: no installer configured")
        argv = [a.replace("{file}", str(image)).replace("{version}", version) for a in self.argv]
        for stale in (self.result, self.pid_file):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        with self.output.open("wb") as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", WRAPPER, "sh", *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=out, start_new_session=True, env={**os.environ, "VA_OTA_RESULT": str(self.result), "VA_OTA_PID": str(self.pid_file)})
            except OSError as exc:
                raise InstallError(f"installer could not start: {exc.strerror or exc}") from None
        note(installer={"pid": proc.pid, "start": _start_time(proc.pid)})
        log.info("ota_installer_started", argv0=argv[0], pid=proc.pid)
        try:
            await asyncio.wait_for(proc.wait(), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise InstallError(f"installer did not finish within {self.timeout_s:g} s (killed)") from None
        self._outcome()
        progress(100, 100)

    def _outcome(self) -> None:
        try:
            rc = self.result.read_text().strip()
        except OSError:
            raise InstallError("installer ended without a result (killed?)") from None
        if rc != "0":
            tail = _tail(self.output)
            raise InstallError(f"installer exited with {rc}" + (f": {tail}" if tail else ""))

    async def resume(self, installer: dict[str, Any], version: str) -> Resumed:
        """The agent restarted during an install: wait for the installer if it still runs, read its result."""
        pid, start = installer.get("pid"), installer.get("start")
        if not isinstance(pid, int):  # killed before the pid was saved: the wrapper's own record
            pid, start = self._wrapper_pid()
        if isinstance(pid, int) and start is not None:
            deadline = time.monotonic() + self.timeout_s
            while _start_time(pid) == start and not self.result.exists():
                if time.monotonic() > deadline:
                    raise InstallError(f"installer did not finish within {self.timeout_s:g} s")
                await asyncio.sleep(POLL_S)
        if not self.result.exists():
            if isinstance(pid, int):
                raise InstallError("installer ended without a result (power loss during the install?)")
            return "again"   # the agent stopped before the installer started
        self._outcome()
        return "installed"

    def _wrapper_pid(self) -> tuple[int | None, str | None]:
        """(pid, start time) from the wrapper's pid file if it ran in this boot, else (None, None)."""
        try:
            pid_text, _, boot = self.pid_file.read_text().partition(" ")
            pid = int(pid_text) if pid_text.isascii() and pid_text.isdigit() else None
            this_boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except (OSError, ValueError, UnicodeDecodeError):
            return None, None
        if pid is None or boot.strip() != this_boot:
            return None, None
        return pid, _start_time(pid)
