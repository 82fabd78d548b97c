"""Start-up checks of `vehicle-agent run`: a usable state directory, the cloud sink's secret where the config
says it is, and one agent per state directory.

A deployment mistake (a Docker bind mount created by root, a secret file not mounted, a second agent on
the same store) must stop the agent at once with exit code 2, which systemd (`RestartPreventExitStatus=2`)
and a reader of the log take for "fix the deployment", not for a fault worth a restart loop. A fault of the disk
itself (read-only after I/O errors, full) is not a deployment mistake: the agent starts and keeps
its batches in memory until the store can be written (docs/durability.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import NamedTuple

import structlog

from agent.config import AgentConfig
from agent.health import STATUS_FILE
from agent.uplink.base import SinkError

log = structlog.get_logger()

LOCK_FILE = "agent.lock"
EXIT_DEPLOYMENT = 2
# The disk's own faults: the store's memory spill rides them out, a restart would not help either.
DISK_FAULTS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO)


class StartupError(Exception):
    """The agent cannot run as deployed; `fields` are the log event's keys (path, uid, fix, ...)."""

    def __init__(self, event: str, **fields: object) -> None:
        super().__init__(event)
        self.event = event
        self.fields = fields


def _owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "?"
    return f"uid {st.st_uid}, gid {st.st_gid}, mode {st.st_mode & 0o7777:04o}"


def _fix(path: Path) -> str:
    uid, gid = os.getuid(), os.getgid()
    return (f"make {path} writable by uid {uid}: sudo mkdir -p {path} && sudo chown -R {uid}:{gid} {path} "
            "(a container's bind mount or volume: chown it on the host, docs/deployment.md)")


def _refuse(path: Path, exc: OSError, what: str) -> StartupError:
    return StartupError("state_dir_unusable", path=str(path), problem=f"{what}: {exc.strerror or exc}",
                        uid=os.getuid(), owner=_owner(path if path.exists() else path.parent), fix=_fix(path))


def _try_write(path: Path, folder: bool | None) -> None:
    """Write for real (root, ACLs and read-only mounts make `os.access` guess): a folder by creating and
    removing a probe file in it (a file in its place: ENOTDIR), a file opened for appending (a directory
    in its place: EISDIR); `folder` None: whichever is there."""
    if folder or (folder is None and path.is_dir()):
        probe = path / f".write-check-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


_MISPLACED = {errno.EISDIR: "a directory where the agent writes a file", errno.ENOTDIR: "a file where the agent keeps a folder"}


class Writes(NamedTuple):
    """What `vehicle-agent run` writes: folders, the store's files (a directory where one goes is a
    deployment mistake: the store could never be opened, and every batch would be held in memory and
    lost), and paths whose failed writes are counted instead (the status file)."""

    folders: list[Path]
    files: list[Path]
    counted: list[Path]


def check_writable(writes: Writes) -> None:
    """The existing folders and files the agent writes (state directory, store and its -wal/-shm,
    outbox) must be writable by this user; a disk fault is only warned about (the spill rides it out)."""
    kinds: dict[bool | None, list[Path]] = {True: writes.folders, False: writes.files, None: writes.counted}
    for path, folder in [(path, folder) for folder, paths in kinds.items() for path in paths]:
        if not path.exists():
            continue
        try:
            _try_write(path, folder)
        except OSError as exc:
            if exc.errno in DISK_FAULTS:
                log.warning("state_dir_not_writable_now", path=str(path), error=exc.strerror,
                            action="starting; batches stay in memory until it can be written")
                return
            if exc.errno in _MISPLACED:
                raise StartupError("state_dir_unusable", path=str(path), problem=_MISPLACED[exc.errno],
                                   uid=os.getuid(), owner=_owner(path), fix=f"remove {path} (the agent creates it)") from None
            raise _refuse(path, exc, "not writable by this user") from None


class StateLock:
    """An exclusive `flock` on `<state_dir>/agent.lock` held for the life of the process, holding its pid.

    Two agents on one store would interleave batches, counters and status files; the kernel drops the
    lock when the process dies, however it dies, so a stale lock never blocks a restart.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in DISK_FAULTS:
                raise _refuse(self.path.parent, exc, f"cannot create {self.path.name}") from None
            try:  # a read-only disk: an existing lock file can still be locked
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                log.warning("state_lock_unavailable", path=str(self.path), error=exc.strerror,
                            action="starting without the one-agent-per-state-directory lock")
                return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self.fd)
            self.fd = None
            raise StartupError("state_dir_in_use", path=str(self.path.parent), pid=holder,
                               problem=f"another vehicle-agent (pid {holder}) runs on this state directory",
                               fix="stop it first, or give this agent its own state_dir") from None
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # read-only: the lock holds without the pid in it

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def prepare_state_dir(state_dir: Path, writes: Writes) -> StateLock:
    """Create the state directory if needed, check what the agent will write, take the lock.

    Raises StartupError for a deployment mistake (no permission, not a directory, another agent).
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in DISK_FAULTS:
            raise _refuse(state_dir, exc, "cannot create the state directory") from None
        log.warning("state_dir_read_only", path=str(state_dir), error=exc.strerror,
                    action="keeping batches in memory until it can be written")
    if not state_dir.is_dir():
        if state_dir.exists():
            raise StartupError("state_dir_unusable", path=str(state_dir), problem="not a directory",
                               uid=os.getuid(), owner=_owner(state_dir), fix=f"remove {state_dir} or set state_dir")
        return StateLock(state_dir)  # a read-only disk without it: nothing to lock, the spill keeps batches
    check_writable(writes._replace(folders=[state_dir, *writes.folders]))
    lock = StateLock(state_dir)
    lock.acquire()
    return lock


def check_secrets(cfg: AgentConfig) -> None:
    """The cloud sink's secret is where the config says (agent/uplink/secrets.py): a `*_FILE` variable
    naming a file that is missing, unreadable or empty, or an IoT Hub connection-string identity with no
    secret at all, is a deployment mistake, not a link fault to retry forever. The error names the
    variable and the file, never the secret."""
    try:
        if cfg.sink.type == "iothub" and cfg.sink.iothub.identity.endswith("_connection_string"):
            from agent.uplink.iothub import read_connection_string  # the SDK is imported only when used

            read_connection_string(cfg.sink.iothub, cfg.resolve("."))
        elif cfg.sink.type == "mqtt" and cfg.sink.mqtt.username:
            from agent.uplink.mqtt import read_password

            read_password(cfg.sink.mqtt, cfg.resolve("."))
    except SinkError as exc:
        raise StartupError("sink_secret_unusable", sink=cfg.sink.type, problem=str(exc),
                           fix="mount the secret's file where the variable says, or set the variable "
                           "(docs/deployment.md)") from None


def agent_writes(cfg: AgentConfig) -> Writes:
    """What `vehicle-agent run` writes under its configuration, for `check_writable`."""
    store = cfg.state_path(cfg.store.path)
    folders = [store.parent, *([cfg.state_path(cfg.sink.path)] if cfg.sink.type == "file" else [])]
    return Writes(folders, [store, Path(f"{store}-wal"), Path(f"{store}-shm")], [cfg.resolve(cfg.state_dir) / STATUS_FILE])


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat's start time against the boot
    clock, 10 ms resolution; None where that is not available): the start-up figure the agent logs
    with its first decoded frame, which imports and database parsing dominate."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        return round(time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
