"""systemd's notify protocol (sd_notify), so `Type=notify` and `WatchdogSec=` work without libsystemd.

The service manager passes a datagram socket in $NOTIFY_SOCKET; the agent sends READY=1 once its
buses and sink are started, WATCHDOG=1 from its housekeeping loop (so a hung event loop gets the
process restarted), STATUS= lines for `systemctl status`, and STOPPING=1 on shutdown. Outside
systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger()


class Notifier:
    """One agent's connection to the service manager."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isascii() and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 2e6 if watched else None  # ping twice per timeout
        self._last_ping = 0.0
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        """Send one notification; False (logged once) if the manager cannot be reached."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                # Non-blocking: a manager that does not read (its queue holds ~10 datagrams) must not
                # stall the event loop; a refused send is logged and the next ping tries again.
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(message.encode(), self.address)
            self._failed = False
            return True
        except OSError as exc:  # kept trying: giving up would stop the watchdog pings and get us killed
            if not self._failed:
                log.warning("sd_notify_failed", message=message.split("=")[0], error=str(exc))
            self._failed = True
            return False

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def watchdog(self, status: str | None = None) -> None:
        """Ping the watchdog when half its timeout passed (call it often; it rate-limits itself)."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.send("WATCHDOG=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
